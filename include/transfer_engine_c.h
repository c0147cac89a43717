/*
 * transfer_engine_c.h -- C ABI of te-rs (libtransfer_engine).
 *
 * te-rs is a Rust implementation of the Mooncake Transfer Engine. This header
 * is ABI-identical to Mooncake's `transfer_engine_c.h`: the same names,
 * macros, constant values, struct layouts and function signatures, so that
 * existing C, C++, Go (cgo), Rust (bindgen) and Python (ctypes) callers can
 * link against te-rs unchanged.
 *
 * Licensed under the Apache License, Version 2.0.
 *
 * Return-value conventions (they differ between function groups):
 *   - submitTransfer, submitTransferWithNotify, getTransferStatus,
 *     freeBatchID: 0 on success, a POSITIVE status code on failure
 *     (1 invalid argument, 2 too many requests, 3 address not registered,
 *     4 batch busy, 8 transport not supported, ...).
 *   - register / unregister functions, genNotifyInEngine, removeLocalSegment:
 *     0 on success, a NEGATIVE ERR_* code on failure (-1 invalid argument,
 *     -3 address not registered, -7 address overlapped, -200 metadata, ...).
 *   - openSegment / openSegmentNoCache: segment id >= 0, or -1.
 *   - createTransferEngine / installTransport: a handle, or NULL.
 *   - getNicLoadStats / showLinks: 0, or -1 on bad arguments.
 * te-rs validates every handle and batch id: a NULL, destroyed or foreign
 * handle is refused with the function's error value and a log line.
 */

#ifndef TRANSFER_ENGINE_C
#define TRANSFER_ENGINE_C

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif /* __cplusplus */

#define segment_handle_t int32_t
#define segment_id_t int32_t
#define batch_id_t uint64_t
#define LOCAL_SEGMENT (0)
#define INVALID_BATCH UINT64_MAX

#define OPCODE_READ (0)
#define OPCODE_WRITE (1)

/* One transfer. `target_offset` is the absolute virtual address inside the
 * target process (a registered buffer's addr plus an offset). */
struct transfer_request {
    int opcode;
    void *source;
    segment_id_t target_id;
    uint64_t target_offset;
    uint64_t length;
};

typedef struct transfer_request transfer_request_t;

/* A notification: sender-chosen name and message, both NUL-terminated. */
struct notify_msg {
    char *name;
    char *msg;
};

typedef struct notify_msg notify_msg_t;

#define STATUS_WAITING (0)
#define STATUS_PENDING (1)
#define STATUS_INVALID (2)
#define STATUS_CANCELED (3)
#define STATUS_COMPLETED (4)
#define STATUS_TIMEOUT (5)
#define STATUS_FAILED (6)

struct transfer_status {
    int status; /* always one of STATUS_* (0..6) */
    uint64_t transferred_bytes;
};

/* Kept for layout compatibility; no function takes or returns it. */
struct segment_desc {
    int type;
    union {
        struct {
            void *addr;
            uint64_t size;
            const char *location;
        } rdma;
        struct {
            const char *file_path;
            const char *subsystem_name;
            const char *proto;
            const char *ip;
            uint64_t port;
        } nvmeof;
    } desc_;
};

typedef struct transfer_status transfer_status_t;

struct buffer_entry {
    void *addr;
    size_t length;
};
typedef struct buffer_entry buffer_entry_t;

typedef struct segment_desc segment_desc_t;
typedef void *transfer_engine_t;
typedef void *transport_t;

/*
 * Every `const char *` argument is read (and copied) during the call only;
 * the caller keeps ownership and may free it as soon as the call returns.
 */

/* Create an engine. `ip_or_host_name` and `rpc_port` are ignored (as in the
 * classic Mooncake engine); in P2PHANDSHAKE mode peers must use the name
 * reported by getLocalIpAndPort(). Returns NULL on failure. */
transfer_engine_t createTransferEngine(const char *metadata_conn_string,
                                       const char *local_server_name,
                                       const char *ip_or_host_name,
                                       uint64_t rpc_port, int auto_discover);

int discoverTopology(transfer_engine_t engine);

/* Writes "<ip>:<rpc port>" NUL-terminated, truncated to buf_len. */
int getLocalIpAndPort(transfer_engine_t engine, char *buf_out, size_t buf_len);

/* `args` may be NULL; args[0], when non-NULL, is a NIC priority matrix in
 * JSON. Returns an opaque non-NULL token, or NULL on failure. */
transport_t installTransport(transfer_engine_t engine, const char *proto,
                             void **args);

int uninstallTransport(transfer_engine_t engine, const char *proto);

segment_id_t openSegment(transfer_engine_t engine, const char *segment_name);

segment_id_t openSegmentNoCache(transfer_engine_t engine,
                                const char *segment_name);

int closeSegment(transfer_engine_t engine, segment_id_t segment_id);

/* EFA is not part of te-rs: always returns 0. */
int warmupEfaSegment(transfer_engine_t engine, const char *segment_name);

int removeLocalSegment(transfer_engine_t engine, const char *segment_name);

void destroyTransferEngine(transfer_engine_t engine);

int registerLocalMemory(transfer_engine_t engine, void *addr, size_t length,
                        const char *location, int remote_accessible);

int unregisterLocalMemory(transfer_engine_t engine, void *addr);

int registerLocalMemoryBatch(transfer_engine_t engine,
                             buffer_entry_t *buffer_list, size_t buffer_len,
                             const char *location);

int unregisterLocalMemoryBatch(transfer_engine_t engine, void **addr_list,
                               size_t addr_len);

/* Returns INVALID_BATCH only when the engine handle is invalid. */
batch_id_t allocateBatchID(transfer_engine_t engine, size_t batch_size);

int submitTransfer(transfer_engine_t engine, batch_id_t batch_id,
                   struct transfer_request *entries, size_t count);

/* The notification is sent to entries[0].target_id once a getTransferStatus
 * call sees the whole batch COMPLETED. */
int submitTransferWithNotify(transfer_engine_t engine, batch_id_t batch_id,
                             struct transfer_request *entries, size_t count,
                             notify_msg_t notify_msg);

/* Drains received notifications into a malloc'd array (free it with
 * freeNotifsMsgBuf). Returns NULL with *size = 0 when there are none. */
notify_msg_t *getNotifsFromEngine(transfer_engine_t engine, int *size);

int freeNotifsMsgBuf(notify_msg_t *msg, int size);

int genNotifyInEngine(transfer_engine_t engine, uint64_t target_id,
                      notify_msg_t notify_msg);

/* `*status` is written only when 0 is returned. */
int getTransferStatus(transfer_engine_t engine, batch_id_t batch_id,
                      size_t task_id, struct transfer_status *status);

/* Returns 4 (batch busy) until every task was seen COMPLETED or FAILED by
 * getTransferStatus. */
int freeBatchID(transfer_engine_t engine, batch_id_t batch_id);

int syncSegmentCache(transfer_engine_t engine);

struct nic_load_stat {
    char device_name[64];
    uint64_t inflight_bytes;
    double ewma_bandwidth_bps;
};

typedef struct nic_load_stat nic_load_stat_t;

/* Copies min(n, *count) entries and sets *count = n. Any NULL argument: -1. */
int getNicLoadStats(transfer_engine_t engine, nic_load_stat_t *stats,
                    size_t *count);

/* On SIGTERM/SIGINT, destroy every registered engine, then _exit(128+signo). */
void enableGracefulShutdown(transfer_engine_t engine);

/* Diagnostic text (json != 0: JSON), NUL-terminated and truncated to buf_len.
 * NULL engine or buffer, or buf_len == 0: -1. */
int showLinks(transfer_engine_t engine, char *buf_out, size_t buf_len,
              int json);

#ifdef __cplusplus
}
#endif /* __cplusplus */

#endif /* TRANSFER_ENGINE_C */
