#!/usr/bin/env bash
# The real-verbs suite. Runs INSIDE the SoftRoCE guest (scripts/rdma-vm.sh);
# scripts/test-rxe.sh builds everything on the host and boots the guest.
#   1. tests/verbs_rxe.rs: the ibverbs provider on rxe0/rxe1 (RXE_VERBS_BIN,
#      the test binary cargo built; its tests are #[ignore]d on the host).
#   2. tests/rxe/suite.py: te-rs <-> te-rs in two processes (C ABI), te-bench
#      --check, the ready ACK on real QPs, interop with the C++ engine over
#      RDMA, peer kill and link flap.
# Ends with "N passed, N failed" over both parts.
set -uo pipefail
[[ "${TE_VM:-}" == 1 ]] || { echo "rxe-suite: runs inside scripts/rdma-vm.sh" >&2; exit 2; }
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
passed=0 failed=0

for d in rxe0 rxe1; do
    state=$(cat /sys/class/infiniband/$d/ports/1/state 2>/dev/null)
    [[ "$state" == *ACTIVE* ]] || { echo "rxe-suite: $d is not ACTIVE ($state)"; echo "0 passed, 1 failed"; exit 1; }
done

echo "== ibverbs provider on rxe (tests/verbs_rxe.rs)"
if [[ -x "${RXE_VERBS_BIN:-}" ]]; then
    out=$("$RXE_VERBS_BIN" --ignored --test-threads=1 2>&1); rc=$?
    echo "$out" | grep -E '^test |^test result|panicked|assert' | head -200
    p=$(echo "$out" | sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' | tail -1)
    f=$(echo "$out" | sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' | tail -1)
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
    if [[ $rc -ne 0 && ${f:-0} -eq 0 ]]; then failed=$((failed + 1)); fi
    if [[ ${p:-0} -eq 0 ]]; then echo "rxe-suite: verbs_rxe ran no test"; failed=$((failed + 1)); fi
else
    echo "rxe-suite: RXE_VERBS_BIN is not an executable (${RXE_VERBS_BIN:-unset})"
    failed=$((failed + 1))
fi

echo "== multi-process RDMA checks (tests/rxe/suite.py)"
out_file=$(mktemp)
timeout 1500 "$PY" tests/rxe/suite.py 2>&1 | tee "$out_file"
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out_file" | tail -1)
if [[ -n "$line" ]]; then
    passed=$((passed + ${line%% passed*}))
    f=${line#*, }; failed=$((failed + ${f%% failed*}))
else
    echo "rxe-suite: suite.py ended without a result line"
    failed=$((failed + 1))
fi
echo "rxe-suite: $passed passed, $failed failed"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
