#!/usr/bin/env python3
"""Emulation of worker/kernels/cuda/attention.cu, block by block, warp by warp, lane by lane.

There was no GPU to run the CUDA attention kernels on when they were written, so this script
replays their index arithmetic and control flow (query rows per block, 32-key tiles in
"shared memory", the online softmax with its running max and correction, the two backward
passes: dq per query row, dk/dv per key row summed over the grouped query heads) in numpy,
in float64, and compares the results with PyTorch autograd on the same causal attention.
It checks the algorithm and the indexing as transcribed, not the compiled CUDA code.

Run: .venv/bin/python tests/gpu/attention_emulation.py
Measured when written: output and dqkv within ~4e-15 of PyTorch for (B,T,NH,NKV,hd) =
(2,37,4,2,32), (1,70,4,4,64), (1,33,8,1,32), every dqkv element written exactly once.
"""
import numpy as np
ROWS, TILE = 4, 32
def fwd(qkv, B, T, NH, NKV, hd):
    S = (NH + 2*NKV)*hd; out = np.zeros((B, T, NH*hd)); lse = np.zeros((B, NH, T))
    scale = 1/np.sqrt(hd); dpl = hd//32
    for b in range(B):
        base = qkv[b]
        for h in range(NH):
            kvh = h // (NH//NKV)
            for bx in range((T+ROWS-1)//ROWS):
                tmax = min(T-1, bx*ROWS+ROWS-1)
                st = {}
                for w in range(ROWS):
                    t = bx*ROWS+w
                    st[w] = dict(m=-np.inf, l=0.0, acc=np.zeros(hd), q=base[t, h*hd:(h+1)*hd] if t < T else None)
                for j0 in range(0, tmax+1, TILE):
                    sk = np.zeros((TILE, hd)); sv = np.zeros((TILE, hd))
                    for jj in range(TILE):
                        j = j0+jj
                        if j < T:
                            sk[jj] = base[j, (NH+kvh)*hd:(NH+kvh+1)*hd]; sv[jj] = base[j, (NH+NKV+kvh)*hd:(NH+NKV+kvh+1)*hd]
                    for w in range(ROWS):
                        t = bx*ROWS+w
                        if t >= T or j0 > t: continue
                        s = np.full(32, -np.inf)
                        for lane in range(32):
                            j = j0+lane
                            if j <= t: s[lane] = st[w]['q'] @ sk[lane] * scale
                        mn = max(st[w]['m'], s.max())
                        corr = np.exp(st[w]['m'] - mn)
                        p = np.where(np.arange(32)+j0 <= t, np.exp(s - mn), 0.0)
                        st[w]['l'] = st[w]['l']*corr + p.sum()
                        st[w]['acc'] = st[w]['acc']*corr + p @ sv
                        st[w]['m'] = mn
                for w in range(ROWS):
                    t = bx*ROWS+w
                    if t < T:
                        out[b, t, h*hd:(h+1)*hd] = st[w]['acc']/st[w]['l']
                        lse[b, h, t] = st[w]['m'] + np.log(st[w]['l'])
    return out, lse
def bwd(dout, out, lse, qkv, B, T, NH, NKV, hd):
    S = (NH + 2*NKV)*hd; dqkv = np.full((B, T, S), np.nan); D = np.zeros((B, NH, T))
    scale = 1/np.sqrt(hd); group = NH//NKV
    for b in range(B):
        base = qkv[b]
        # pass 1
        for h in range(NH):
            kvh = h // group
            for bx in range((T+ROWS-1)//ROWS):
                tmax = min(T-1, bx*ROWS+ROWS-1)
                st = {}
                for w in range(ROWS):
                    t = bx*ROWS+w
                    if t < T:
                        do = dout[b, t, h*hd:(h+1)*hd]; o = out[b, t, h*hd:(h+1)*hd]
                        D[b, h, t] = do @ o
                        st[w] = dict(q=base[t, h*hd:(h+1)*hd], do=do, z=lse[b, h, t], D=D[b, h, t], dq=np.zeros(hd))
                for j0 in range(0, tmax+1, TILE):
                    sk = np.zeros((TILE, hd)); sv = np.zeros((TILE, hd))
                    for jj in range(TILE):
                        j = j0+jj
                        if j < T:
                            sk[jj] = base[j, (NH+kvh)*hd:(NH+kvh+1)*hd]; sv[jj] = base[j, (NH+NKV+kvh)*hd:(NH+NKV+kvh+1)*hd]
                    for w in range(ROWS):
                        t = bx*ROWS+w
                        if t >= T or j0 > t: continue
                        ds = np.zeros(32)
                        for lane in range(32):
                            j = j0+lane
                            if j <= t:
                                s = st[w]['q'] @ sk[lane]; dp = st[w]['do'] @ sv[lane]
                                p = np.exp(s*scale - st[w]['z']); ds[lane] = p*(dp - st[w]['D'])
                        st[w]['dq'] += ds @ sk
                for w in range(ROWS):
                    t = bx*ROWS+w
                    if t < T: dqkv[b, t, h*hd:(h+1)*hd] = st[w]['dq']*scale
        # pass 2
        for kvh in range(NKV):
            for bx in range((T+ROWS-1)//ROWS):
                jmin = bx*ROWS
                st = {}
                for w in range(ROWS):
                    j = bx*ROWS+w
                    if j < T: st[w] = dict(k=base[j, (NH+kvh)*hd:(NH+kvh+1)*hd], v=base[j, (NH+NKV+kvh)*hd:(NH+NKV+kvh+1)*hd], dk=np.zeros(hd), dv=np.zeros(hd))
                for g in range(group):
                    h = kvh*group+g
                    for t0 in range(jmin, T, TILE):
                        sq = np.zeros((TILE, hd)); sdo = np.zeros((TILE, hd)); sz = np.zeros(TILE); sD = np.zeros(TILE)
                        for tt in range(TILE):
                            t = t0+tt
                            if t < T:
                                sq[tt] = base[t, h*hd:(h+1)*hd]; sdo[tt] = dout[b, t, h*hd:(h+1)*hd]; sz[tt] = lse[b, h, t]; sD[tt] = D[b, h, t]
                        for w in range(ROWS):
                            j = bx*ROWS+w
                            if j >= T: continue
                            p = np.zeros(32); ds = np.zeros(32)
                            for lane in range(32):
                                t = t0+lane
                                if t < T and t >= j:
                                    s = sq[lane] @ st[w]['k']; dp = sdo[lane] @ st[w]['v']
                                    p[lane] = np.exp(s*scale - sz[lane]); ds[lane] = p[lane]*(dp - sD[lane])
                            st[w]['dv'] += p @ sdo; st[w]['dk'] += ds @ sq
                for w in range(ROWS):
                    j = bx*ROWS+w
                    if j < T:
                        dqkv[b, j, (NH+kvh)*hd:(NH+kvh+1)*hd] = st[w]['dk']*scale
                        dqkv[b, j, (NH+NKV+kvh)*hd:(NH+NKV+kvh+1)*hd] = st[w]['dv']
    return dqkv
def reference(qkv, dout, B, T, NH, NKV, hd):
    import torch
    x = torch.tensor(qkv, requires_grad=True)
    q = x[..., :NH*hd].reshape(B, T, NH, hd).transpose(1, 2)
    k = x[..., NH*hd:(NH+NKV)*hd].reshape(B, T, NKV, hd).transpose(1, 2).repeat_interleave(NH//NKV, 1)
    v = x[..., (NH+NKV)*hd:].reshape(B, T, NKV, hd).transpose(1, 2).repeat_interleave(NH//NKV, 1)
    att = (q @ k.transpose(-1, -2)) / np.sqrt(hd)
    att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float('-inf')).softmax(-1)
    o = (att @ v).transpose(1, 2).reshape(B, T, NH*hd)
    o.backward(torch.tensor(dout))
    return o.detach().numpy(), x.grad.numpy()
rng = np.random.default_rng(1)
for (B, T, NH, NKV, hd) in [(2, 37, 4, 2, 32), (1, 70, 4, 4, 64), (1, 33, 8, 1, 32)]:
    qkv = rng.standard_normal((B, T, (NH+2*NKV)*hd)); dout = rng.standard_normal((B, T, NH*hd))
    out, lse = fwd(qkv, B, T, NH, NKV, hd)
    dq = bwd(dout, out, lse, qkv, B, T, NH, NKV, hd)
    ro, rg = reference(qkv, dout, B, T, NH, NKV, hd)
    print(f"B{B} T{T} NH{NH} NKV{NKV} hd{hd}: out max diff {np.abs(out-ro).max():.2e}, dqkv max diff {np.abs(dq-rg).max():.2e}, unwritten {np.isnan(dq).sum()}")
