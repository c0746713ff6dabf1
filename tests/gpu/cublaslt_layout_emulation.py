#!/usr/bin/env python3
"""The operand order, transposes and layouts td_cuda_matmul_bf16 (worker/kernels/cuda/ops.cu)
hands cuBLASLt, evaluated with cuBLASLt's column-major semantics in numpy, against the
row-major product the function promises, for all four transpose combinations. Written
while no GPU was at hand; prints the max difference per case (0.0 when the mapping holds).
Run: .venv/bin/python tests/gpu/cublaslt_layout_emulation.py
"""
import numpy as np
def colmajor(buf, rows, cols, ld):  # view of a flat buffer as a column-major rows x cols matrix
    return np.array([[buf[c*ld + r] for c in range(cols)] for r in range(rows)])
rng = np.random.default_rng(0)
M, N, K = 5, 7, 3
for tA in (0, 1):
    for tB in (0, 1):
        A = rng.standard_normal((K, M) if tA else (M, K)); Bm = rng.standard_normal((N, K) if tB else (K, N))
        want = (A.T if tA else A) @ (Bm.T if tB else Bm)            # row-major C (M,N)
        # first operand = our B: layout rows=(K if tB else N), cols=(N if tB else K), ld=(K if tB else N)
        la = colmajor(Bm.ravel(), K if tB else N, N if tB else K, K if tB else N)
        lb = colmajor(A.ravel(), M if tA else K, K if tA else M, M if tA else K)
        opa = la.T if tB else la   # transa = T when transB
        opb = lb.T if tA else lb   # transb = T when transA
        D = opa @ opb              # (N, M) column-major, ld N
        flat = np.zeros(M*N)
        for r in range(N):
            for c in range(M): flat[c*N + r] = D[r, c]
        got = flat.reshape(M, N)   # row-major read of the ld-N column-major D
        print(tA, tB, np.abs(got - want).max())
