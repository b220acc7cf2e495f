#!/usr/bin/python3
"""torch_augment_check.py - PyTorch reference for the distillation loss and the bilinear resize.

Usage:  /usr/bin/python3 tests/torch_augment_check.py DIR N_KL N_RESIZE

tests/test_augment.c writes into DIR (float32 .npy):
  kl{i}_student.npy, kl{i}_teacher.npy  (B, K) logits      kl{i}_temperature.npy  [T]
  kl{i}_loss.npy  [loss]                kl{i}_grad.npy  (B, K) d loss / d student logits
  resize{i}_src.npy  (C, H, W)          resize{i}_dst.npy  (C, h, w) its resize, whole image
for i in 0..N_KL-1 and 0..N_RESIZE-1.

The reference, in float64 (inputs cast from float32, so both sides see the same numbers):
  loss = T^2 * F.kl_div(F.log_softmax(s/T), F.log_softmax(t/T), log_target=True,
                        reduction='batchmean'), its gradient w.r.t. s by autograd;
  resize = F.interpolate(src[None], size=(h, w), mode='bilinear', align_corners=False,
                         antialias=False).
Tolerances:
  loss     |c - r| <= 1e-5 * |r|                       (relative 1e-5)
  gradient |c - r| <= 1e-5 * |r| + 1e-5 * max|r|       (relative, with the absolute part
           scaled to the tensor: the C gradient is T/B * (q - p) in float, whose rounding
           is relative to the largest probabilities, not to each entry)
  resize   |c - r| <= 1e-5                              (pixels in [0, 1])
Prints "ok   NAME" or "FAIL NAME: ..." per check; exits 0 if all pass, 1 if any fails,
2 if a file is missing or unreadable.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5
RESIZE_ATOL = 1e-5

failures = 0
passes = 0


def report(name, ok, detail=""):
    global failures, passes
    if ok:
        passes += 1
        print(f"ok   {name}")
    else:
        failures += 1
        print(f"FAIL {name}: {detail}")


def load(directory, name):
    path = os.path.join(directory, name)
    try:
        a = np.load(path)
    except (OSError, ValueError) as e:
        print(f"FAIL {name}: cannot read {path}: {e}")
        sys.exit(2)
    if a.dtype != np.float32:
        print(f"FAIL {name}: dtype {a.dtype}, want float32")
        sys.exit(2)
    return torch.from_numpy(a.astype(np.float64))


def check_kl(directory, i):
    s = load(directory, f"kl{i}_student.npy")
    t = load(directory, f"kl{i}_teacher.npy")
    temperature = float(load(directory, f"kl{i}_temperature.npy").reshape(-1)[0])
    loss_c = float(load(directory, f"kl{i}_loss.npy").reshape(-1)[0])
    grad_c = load(directory, f"kl{i}_grad.npy")
    name = f"kl T={temperature:g}"
    if s.shape != t.shape or s.shape != grad_c.shape or s.dim() != 2:
        report(name, False, f"shapes student {tuple(s.shape)} teacher {tuple(t.shape)} grad {tuple(grad_c.shape)}")
        return
    s = s.clone().requires_grad_(True)
    loss = temperature ** 2 * F.kl_div(F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                                       log_target=True, reduction="batchmean")
    loss.backward()
    loss_r = loss.item()
    grad_r = s.grad
    err = abs(loss_c - loss_r)
    report(f"{name} loss", err <= LOSS_RTOL * abs(loss_r),
           f"C {loss_c:.9g} torch {loss_r:.9g} (rel err {err / max(abs(loss_r), 1e-300):.3g} > {LOSS_RTOL:g})")
    diff = (grad_c - grad_r).abs()
    bound = GRAD_RTOL * grad_r.abs() + GRAD_RTOL * grad_r.abs().max()
    bad = ~(diff <= bound)  # NaN fails too
    if bad.any():
        k = int(torch.nonzero(bad.reshape(-1))[0])
        report(f"{name} gradient", False,
               f"{int(bad.sum())} of {bad.numel()} entries off; first [{k}] C {grad_c.reshape(-1)[k]:.9g} "
               f"torch {grad_r.reshape(-1)[k]:.9g}")
    else:
        report(f"{name} gradient", True)


def check_resize(directory, i):
    src = load(directory, f"resize{i}_src.npy")
    dst = load(directory, f"resize{i}_dst.npy")
    name = f"resize {tuple(src.shape)} -> {tuple(dst.shape)}"
    if src.dim() != 3 or dst.dim() != 3 or src.shape[0] != dst.shape[0]:
        report(name, False, "shapes do not match (C, H, W) -> (C, h, w)")
        return
    ref = F.interpolate(src[None], size=tuple(dst.shape[1:]), mode="bilinear", align_corners=False,
                        antialias=False)[0]
    err = (dst - ref).abs()
    worst = float(err.max())
    bad = int((~(err <= RESIZE_ATOL)).sum())  # NaN fails too
    report(name, bad == 0, f"{bad} of {err.numel()} values off; max abs error {worst:.3g} > {RESIZE_ATOL:g}")


def main():
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[2])
        sys.exit(2)
    directory, n_kl, n_resize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_default_dtype(torch.float64)
    for i in range(n_kl):
        check_kl(directory, i)
    for i in range(n_resize):
        check_resize(directory, i)
    if passes + failures == 0:
        report("anything to check", False, "no cases given")
    print(f"torch_augment_check: {passes} ok, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
