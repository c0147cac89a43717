// The header from C++: extern "C" linkage, usable types, calls link.
#include <transfer_engine_c.h>

#include <cstdio>
#include <cstring>
#include <type_traits>

static_assert(sizeof(transfer_request_t) == 40, "transfer_request layout");
static_assert(std::is_same<decltype(&openSegment),
                           int32_t (*)(transfer_engine_t, const char *)>::value,
              "openSegment signature");
static_assert(std::is_same<decltype(&allocateBatchID),
                           uint64_t (*)(transfer_engine_t, size_t)>::value,
              "allocateBatchID signature");

int main() {
    transfer_engine_t e =
        createTransferEngine("P2PHANDSHAKE", "127.0.0.1", "127.0.0.1", 0, 0);
    if (e == nullptr) {
        std::fprintf(stderr, "createTransferEngine failed\n");
        return 1;
    }
    int failures = 0;
    char buf[128] = {0};
    if (getLocalIpAndPort(e, buf, sizeof buf) != 0 || std::strchr(buf, ':') == nullptr) failures++;
    batch_id_t b = allocateBatchID(e, 4);
    if (b == INVALID_BATCH) failures++;
    transfer_status_t st{};
    if (getTransferStatus(e, b, 0, &st) != 1) failures++;  // no task 0 yet
    if (freeBatchID(e, b) != 0) failures++;
    if (installTransport(e, "no-such-protocol", nullptr) != nullptr) failures++;
    destroyTransferEngine(e);
    std::printf("compile_cpp: %d failure(s), engine was %s\n", failures, buf);
    return failures == 0 ? 0 : 1;
}
