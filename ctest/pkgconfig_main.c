/* Built by pkgconfig_test.sh with `cc $(pkg-config --cflags --libs transfer_engine)`. */
#include <stdio.h>
#include <string.h>
#include <transfer_engine_c.h>

int main(void) {
    char buf[128];
    transfer_engine_t e = createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
    if (!e) {
        fprintf(stderr, "createTransferEngine failed\n");
        return 1;
    }
    if (getLocalIpAndPort(e, buf, sizeof buf) != 0 || strchr(buf, ':') == NULL) {
        fprintf(stderr, "getLocalIpAndPort failed: '%s'\n", buf);
        return 1;
    }
    printf("pkg-config build OK, engine at %s\n", buf);
    destroyTransferEngine(e);
    return 0;
}
