/* Built with upstream Mooncake link lines (upstream_link_lines.sh). */
#include <string.h>
#include <transfer_engine_c.h>

#include "check.h"

int main(void) {
    char buf[128] = {0};
    transfer_engine_t e = createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
    REQUIRE(e != NULL);
    CHECK_EQ(getLocalIpAndPort(e, buf, sizeof buf), 0);
    CHECK(strchr(buf, ':') != NULL);
    CHECK_EQ(showLinks(e, buf, sizeof buf, 1), 0);
    CHECK(buf[0] == '{');
    destroyTransferEngine(e);
    return te_finish("upstream_link_app");
}
