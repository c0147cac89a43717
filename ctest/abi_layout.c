/* Struct layouts and constant values of spec §1.1 (LP64), checked at
 * compile time; a mismatch fails the build of this test. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <transfer_engine_c.h>

#define SA(c) static_assert(c, #c)

/* Constants. */
SA(LOCAL_SEGMENT == 0);
SA(INVALID_BATCH == UINT64_MAX);
SA(OPCODE_READ == 0);
SA(OPCODE_WRITE == 1);
SA(STATUS_WAITING == 0);
SA(STATUS_PENDING == 1);
SA(STATUS_INVALID == 2);
SA(STATUS_CANCELED == 3);
SA(STATUS_COMPLETED == 4);
SA(STATUS_TIMEOUT == 5);
SA(STATUS_FAILED == 6);

/* Type aliases. */
SA(sizeof(segment_id_t) == 4 && (segment_id_t)-1 < 0);
SA(sizeof(segment_handle_t) == 4 && (segment_handle_t)-1 < 0);
SA(sizeof(batch_id_t) == 8 && (batch_id_t)-1 > 0);
SA(sizeof(transfer_engine_t) == sizeof(void *));
SA(sizeof(transport_t) == sizeof(void *));

/* struct transfer_request: 0, 8, 16, 24, 32; size 40, align 8. */
SA(sizeof(struct transfer_request) == 40);
SA(_Alignof(struct transfer_request) == 8);
SA(offsetof(struct transfer_request, opcode) == 0);
SA(offsetof(struct transfer_request, source) == 8);
SA(offsetof(struct transfer_request, target_id) == 16);
SA(offsetof(struct transfer_request, target_offset) == 24);
SA(offsetof(struct transfer_request, length) == 32);
SA(sizeof(transfer_request_t) == 40);

/* struct notify_msg: two pointers, passed by value. */
SA(sizeof(struct notify_msg) == 16);
SA(offsetof(struct notify_msg, name) == 0);
SA(offsetof(struct notify_msg, msg) == 8);
SA(sizeof(notify_msg_t) == 16);

/* struct transfer_status. */
SA(sizeof(struct transfer_status) == 16);
SA(offsetof(struct transfer_status, status) == 0);
SA(offsetof(struct transfer_status, transferred_bytes) == 8);
SA(sizeof(transfer_status_t) == 16);

/* struct buffer_entry. */
SA(sizeof(struct buffer_entry) == 16);
SA(offsetof(struct buffer_entry, addr) == 0);
SA(offsetof(struct buffer_entry, length) == 8);
SA(sizeof(buffer_entry_t) == 16);

/* struct nic_load_stat. */
SA(sizeof(struct nic_load_stat) == 80);
SA(offsetof(struct nic_load_stat, device_name) == 0);
SA(sizeof(((struct nic_load_stat *)0)->device_name) == 64);
SA(offsetof(struct nic_load_stat, inflight_bytes) == 64);
SA(offsetof(struct nic_load_stat, ewma_bandwidth_bps) == 72);
SA(sizeof(nic_load_stat_t) == 80);

/* struct segment_desc: int tag + union of {ptr,u64,ptr} / {4 ptrs,u64}. */
SA(offsetof(struct segment_desc, type) == 0);
SA(offsetof(struct segment_desc, desc_) == 8);
SA(sizeof(((struct segment_desc *)0)->desc_.rdma) == 24);
SA(sizeof(((struct segment_desc *)0)->desc_.nvmeof) == 40);
SA(sizeof(struct segment_desc) == 48);
SA(sizeof(segment_desc_t) == 48);

int main(void) {
    /* Also confirm at run time that the library is the one linked. */
    printf("abi_layout: transfer_request=%u notify_msg=%u transfer_status=%u "
           "buffer_entry=%u nic_load_stat=%u segment_desc=%u\n",
           (unsigned)sizeof(struct transfer_request), (unsigned)sizeof(struct notify_msg),
           (unsigned)sizeof(struct transfer_status), (unsigned)sizeof(struct buffer_entry),
           (unsigned)sizeof(struct nic_load_stat), (unsigned)sizeof(struct segment_desc));
    return warmupEfaSegment(NULL, NULL);
}
