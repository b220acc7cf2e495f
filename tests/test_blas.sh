#!/bin/sh
# distilld picks OpenBLAS kernels that match the CPU, says which, and never
# overrides a core the user chose with OPENBLAS_CORETYPE.
BUILD=${BUILD:-build}
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }

out=$(env -u OPENBLAS_CORETYPE "$BUILD/distilld" version)
core=$(echo "$out" | sed -n 's/^OpenBLAS core \([A-Za-z0-9]*\).*/\1/p')
[ -n "$core" ] && ok "version prints the OpenBLAS core ($core)" || fail "version prints the OpenBLAS core: $out"

flags=$(grep -m1 '^flags' /proc/cpuinfo)
case " $flags " in
*" avx512f "*" avx512dq "*|*" avx512dq "*" avx512f "*) cpu=avx512 ;;
*" avx2 "*) cpu=avx2 ;;
*) cpu=old ;;
esac
case "$cpu:$core" in
avx512:SkylakeX | avx512:Cooperlake | avx512:SapphireRapids) ok "AVX-512 CPU runs AVX-512 kernels ($core)" ;;
avx2:Haswell | avx2:Zen | avx2:SkylakeX | avx2:Cooperlake) ok "AVX2 CPU runs AVX2 kernels ($core)" ;;
old:*) ok "CPU without AVX2 keeps the detected core ($core)" ;;
*) fail "CPU class $cpu runs core $core: distilld should have re-executed with a better OPENBLAS_CORETYPE" ;;
esac

out=$(OPENBLAS_CORETYPE=Prescott "$BUILD/distilld" version)
echo "$out" | grep -q "^OpenBLAS core Prescott (OPENBLAS_CORETYPE=Prescott)" &&
    ok "a user-set OPENBLAS_CORETYPE is kept" || fail "a user-set OPENBLAS_CORETYPE is kept: $out"

# the re-exec must not loop or lose arguments: predict's usage error still arrives
out=$(env -u OPENBLAS_CORETYPE "$BUILD/distilld" predict --weights /nonexistent.safetensors 2>&1)
echo "$out" | grep -q "required" && ok "arguments survive the re-exec" || fail "arguments survive the re-exec: $out"
echo "$passed passed, $failed failed"
