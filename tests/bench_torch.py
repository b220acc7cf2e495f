#!/usr/bin/python3
"""bench_torch.py - the PyTorch peer of build/tests/bench, for make bench.

    /usr/bin/python3 tests/bench_torch.py KIND MODEL_JSON [TEACHER_JSON] --batch B --threads N
                                          [--iters I] [--warmup W] [--channels-last] [--bf16]
                                          [--bf16-student]
    /usr/bin/python3 tests/bench_torch.py check MODEL_JSON [--batch B]

KIND is train (forward, cross-entropy, backward, clip + Adam), distill (inception crop + flip of
every image, mixup with the batch rolled by one, teacher forward under no_grad, student
forward/backward on T^2 KL, clip + Adam) or infer (forward only, under no_grad, with the
standardized weights computed once up front, as distilld caches them for fixed weights).
--bf16 runs the teacher (distill) or the model (infer) in torch.bfloat16, weights and
activations, as PyTorch's peer of distilld's bfloat16 teacher; for train, and with
--bf16-student for a distill step's student, it runs the trained model's forward under
torch.autocast(bfloat16), PyTorch's mixed precision: the peer of distilld's "precision":
"bfloat16" (bf16 convolutions, float weights, gradients and optimizer).
The model is the BiT ResNetV2 of DESIGN.md section 3 (the same one tests/torch_check.py
implements functionally): pre-activation bottleneck units (or basic units for "block": "basic"),
GroupNorm, weight-standardized
convolutions whose standardization is part of the forward graph in training, zero-padded 3x3/2
max-pool after the 7x7/2 stem for stem "bit". float32, random weights and inputs.

Prints one JSON line of the same shape as bench.c's: median images/s over the timed iterations,
GFLOP/s (same analytic count: conv + head multiply-adds x2, x3 for a training step, plus one
teacher forward for distill), peak RSS of the process (getrusage), parameter count.

"check" compares this module's logits and gradients (float64) and its cached-weight inference
path (float32) against torch_check.forward on the same random weights; exit 1 on a mismatch.

Run it with OPENBLAS_NUM_THREADS=1 and jemalloc preloaded (tests/bench.sh does): see
docs/PERFORMANCE.md.
"""

import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

WS_EPS = 1e-10
GN_EPS = 1e-5
LR, WEIGHT_DECAY, CLIP_NORM = 1e-3, 1e-4, 1.0  # as bench.c's OptimConfig
TEMPERATURE = 1.0


def unit_plan(cfg):
    """(name, cin, mid, cout, stride, has_proj) per unit, as torch_check.unit_plan."""
    c0 = cfg["base_width"] * cfg["width"]
    cin = c0
    for s, n_units in enumerate(cfg["depth"], start=1):
        mid = c0 * 2 ** (s - 1)
        cout = mid if cfg.get("block") == "basic" else 4 * mid
        for b in range(1, n_units + 1):
            stride = 2 if (b == 1 and s >= 2) else 1
            yield "block%d/unit%02d" % (s, b), cin, mid, cout, stride, stride != 1 or cin != cout
            cin = cout


class GroupNorm(nn.GroupNorm):
    """GroupNorm in its parameters' precision: under autocast (bf16 convolutions, float
    parameters) it normalizes in float, as distilld does, where torch 1.13's CPU autocast
    would hand it bf16 activations and fail."""

    def forward(self, x):
        return super().forward(x.to(self.weight.dtype))


class StdConv(nn.Module):
    """Conv with weight standardization (per output channel over (cin, kh, kw), population
    variance, eps 1e-10) computed in forward so gradients reach the raw kernel. freeze()
    stores the standardized kernel once for inference with fixed weights."""

    def __init__(self, cin, cout, k, stride, padding):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.stride, self.padding = stride, padding
        self.frozen = None

    def standardized(self):
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), unbiased=False, keepdim=True)
        return (w - mean) * torch.rsqrt(var + WS_EPS)

    def freeze(self):
        with torch.no_grad():
            self.frozen = self.standardized()  # keeps the weight's memory format

    def forward(self, x):
        w = self.frozen if self.frozen is not None else self.standardized()
        return F.conv2d(x, w, stride=self.stride, padding=self.padding)

    def flops(self, h, w):
        """multiply-adds x2 for one image whose input is h x w; returns (flops, out_h, out_w)."""
        cout, cin, k, _ = self.weight.shape
        ho = (h + 2 * self.padding - k) // self.stride + 1
        wo = (w + 2 * self.padding - k) // self.stride + 1
        return 2.0 * cout * cin * k * k * ho * wo, ho, wo


class Unit(nn.Module):
    """A bottleneck unit, or (basic) a: 3x3 with the stride, b: 3x3, no c."""

    def __init__(self, cin, mid, cout, stride, proj, groups, basic=False):
        super().__init__()
        self.gn_a = GroupNorm(groups, cin, eps=GN_EPS)
        self.proj = StdConv(cin, cout, 1, stride, 0) if proj else None
        self.gn_b = GroupNorm(groups, mid, eps=GN_EPS)
        if basic:
            self.conv_a = StdConv(cin, mid, 3, stride, 1)
            self.conv_b = StdConv(mid, cout, 3, 1, 1)
            self.gn_c = self.conv_c = None
        else:
            self.conv_a = StdConv(cin, mid, 1, 1, 0)
            self.conv_b = StdConv(mid, mid, 3, stride, 1)
            self.gn_c = GroupNorm(groups, mid, eps=GN_EPS)
            self.conv_c = StdConv(mid, cout, 1, 1, 0)

    def forward(self, x):
        p = F.relu(self.gn_a(x))
        shortcut = self.proj(p) if self.proj is not None else x
        h = self.conv_a(p)
        h = self.conv_b(F.relu(self.gn_b(h)))
        if self.conv_c is not None:
            h = self.conv_c(F.relu(self.gn_c(h)))
        return h + shortcut


class BiTResNetV2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        g = cfg["gn_groups"]
        c0 = cfg["base_width"] * cfg["width"]
        if cfg["stem"] == "bit":
            self.stem = StdConv(cfg["in_channels"], c0, 7, 2, 3)
        else:
            self.stem = StdConv(cfg["in_channels"], c0, 3, 1, 1)
        self.names = []
        units = []
        for name, cin, mid, cout, stride, proj in unit_plan(cfg):
            units.append(Unit(cin, mid, cout, stride, proj, g, cfg.get("block") == "basic"))
            self.names.append(name)
        self.units = nn.Sequential(*units)
        cf = (1 if cfg.get("block") == "basic" else 4) * c0 * 2 ** (len(cfg["depth"]) - 1)
        self.gn = GroupNorm(g, cf, eps=GN_EPS)
        self.head = nn.Linear(cf, cfg["num_classes"])  # plain dense, not standardized
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.01)
            self.head.bias.zero_()

    def forward(self, x):
        h = self.stem(x)
        if self.cfg["stem"] == "bit":
            h = F.max_pool2d(F.pad(h, (1, 1, 1, 1)), kernel_size=3, stride=2)  # zero pad, not -inf
        h = self.units(h)
        h = F.relu(self.gn(h))
        return self.head(h.mean(dim=(2, 3)))

    def freeze(self):
        for m in self.modules():
            if isinstance(m, StdConv):
                m.freeze()

    def forward_flops(self):
        """per image, counted as bench.c counts it: every conv, plus the head."""
        s = self.cfg["image_size"]
        f, h, w = self.stem.flops(s, s)
        if self.cfg["stem"] == "bit":
            h, w = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
        for u in self.units:
            if u.proj is not None:
                f += u.proj.flops(h, w)[0]
            fa, h, w = u.conv_a.flops(h, w)
            fb, h, w = u.conv_b.flops(h, w)
            f += fa + fb
            if u.conv_c is not None:
                fc, h, w = u.conv_c.flops(h, w)
                f += fc
        return f + 2.0 * self.head.in_features * self.head.out_features

    def kernel_params(self):
        """kernels get weight decay (as distilld: names ending in /kernel, incl. the head's)."""
        return [m.weight for m in self.modules() if isinstance(m, (StdConv, nn.Linear))]

    def load_bit(self, P):
        """Copies torch_check-style tensors (BiT names, HWIO kernels) into the module."""
        with torch.no_grad():
            def conv(m, name):
                m.weight.copy_(P[name + "/standardized_conv2d/kernel"].permute(3, 2, 0, 1))

            def gn(m, name):
                m.weight.copy_(P[name + "/group_norm/gamma"])
                m.bias.copy_(P[name + "/group_norm/beta"])
            conv(self.stem, "resnet/root_block")
            for name, u in zip(self.names, self.units):
                pre = "resnet/" + name
                gn(u.gn_a, pre + "/a")
                if u.proj is not None:
                    conv(u.proj, pre + "/a/proj")
                conv(u.conv_a, pre + "/a")
                gn(u.gn_b, pre + "/b")
                conv(u.conv_b, pre + "/b")
                if u.conv_c is not None:
                    gn(u.gn_c, pre + "/c")
                    conv(u.conv_c, pre + "/c")
            gn(self.gn, "resnet")
            self.head.weight.copy_(P["resnet/head/conv2d/kernel"][0, 0].t())
            self.head.bias.copy_(P["resnet/head/conv2d/bias"])

    def grads_bit(self):
        """The gradients under BiT names and layouts (for check)."""
        G = {}

        def conv(m, name):
            G[name + "/standardized_conv2d/kernel"] = m.weight.grad.permute(2, 3, 1, 0)

        def gn(m, name):
            G[name + "/group_norm/gamma"] = m.weight.grad
            G[name + "/group_norm/beta"] = m.bias.grad
        conv(self.stem, "resnet/root_block")
        for name, u in zip(self.names, self.units):
            pre = "resnet/" + name
            gn(u.gn_a, pre + "/a")
            if u.proj is not None:
                conv(u.proj, pre + "/a/proj")
            conv(u.conv_a, pre + "/a")
            gn(u.gn_b, pre + "/b")
            conv(u.conv_b, pre + "/b")
            if u.conv_c is not None:
                gn(u.gn_c, pre + "/c")
                conv(u.conv_c, pre + "/c")
        gn(self.gn, "resnet")
        G["resnet/head/conv2d/kernel"] = self.head.weight.grad.t()[None, None]
        G["resnet/head/conv2d/bias"] = self.head.bias.grad
        return G


def make_optimizer(model):
    """Adam with decoupled weight decay on kernels only. distilld's update is
    w -= lr*u + wd*w (wd not scaled by lr); AdamW's is w -= lr*u + lr*wd'*w, so wd' = wd/lr."""
    kernels = {id(p) for p in model.kernel_params()}
    decay = [p for p in model.parameters() if id(p) in kernels]
    rest = [p for p in model.parameters() if id(p) not in kernels]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY / LR},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=LR, betas=(0.9, 0.999), eps=1e-8, foreach=True)


def clip_and_step(model, opt):
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)  # global norm
    opt.step()


def augment(x, gen):
    """Inception crop (area 5-100 %, aspect log-uniform in [3/4, 4/3], up to 10 tries, else the
    whole image; as core/augment.c) + random horizontal flip of every image, as ONE batched
    bilinear resample (affine_grid + grid_sample, align_corners=False, border clamp). The box
    sampling is vectorized: all 10 tries drawn at once per image."""
    B, _C, H, W = x.shape
    tries = 10
    area = H * W * (0.05 + 0.95 * torch.rand(B, tries, generator=gen))
    logr = (torch.rand(B, tries, generator=gen) * 2 - 1) * math.log(4.0 / 3.0)
    ratio = torch.exp(logr)
    cw = torch.sqrt(area * ratio).round()
    ch = torch.sqrt(area / ratio).round()
    ok = (cw >= 1) & (cw <= W) & (ch >= 1) & (ch <= H)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((B,), -1))
    idx = first.clamp(min=0)[:, None]
    cw = torch.where(first >= 0, cw.gather(1, idx)[:, 0], torch.full((B,), float(W)))
    ch = torch.where(first >= 0, ch.gather(1, idx)[:, 0], torch.full((B,), float(H)))
    x0 = torch.floor(torch.rand(B, generator=gen) * (W - cw + 1))
    y0 = torch.floor(torch.rand(B, generator=gen) * (H - ch + 1))
    flip = torch.where(torch.rand(B, generator=gen) < 0.5, -1.0, 1.0)
    # normalized coords (align_corners=False): output x in [-1,1] -> input box centre +- half size
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = flip * cw / W
    theta[:, 0, 2] = (2 * x0 + cw) / W - 1
    theta[:, 1, 1] = ch / H
    theta[:, 1, 2] = (2 * y0 + ch) / H - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def mixup(x, gen):
    """x_i = a x_i + (1-a) x_{i-1 mod B}, a ~ U(0,1) folded to max(a, 1-a): one per batch."""
    a = float(torch.rand(1, generator=gen))
    a = max(a, 1.0 - a)
    return x.mul(a).add_(torch.roll(x, 1, dims=0), alpha=1.0 - a)


def distill_loss(student_logits, teacher_logits, t=TEMPERATURE):
    """T^2 KL(softmax(t/T) || softmax(s/T)), mean over the batch."""
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def parse_args(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    a = {"kind": argv[1], "student": argv[2], "teacher": None, "batch": 128, "threads": 1,
         "iters": 10, "warmup": 3, "channels_last": False, "bf16": False, "bf16_student": False}
    i = 3
    while i < len(argv):
        opt = argv[i]
        if opt in ("--batch", "--threads", "--iters", "--warmup") and i + 1 < len(argv):
            a[opt[2:]] = int(argv[i + 1])
            i += 2
        elif opt == "--channels-last":
            a["channels_last"] = True
            i += 1
        elif opt == "--bf16":
            a["bf16"] = True
            i += 1
        elif opt == "--bf16-student":
            a["bf16_student"] = True
            i += 1
        elif opt.startswith("--"):
            sys.stderr.write("bench_torch: unknown option %s\n" % opt)
            sys.exit(2)
        else:
            a["teacher"] = opt
            i += 1
    if a["kind"] not in ("train", "distill", "infer", "check"):
        sys.stderr.write("bench_torch: unknown kind %s\n" % a["kind"])
        sys.exit(2)
    if a["bf16_student"] and a["kind"] != "distill":
        sys.stderr.write("bench_torch: --bf16-student is for distill (train and infer take --bf16)\n")
        sys.exit(2)
    if a["kind"] == "distill" and not a["teacher"]:
        sys.stderr.write("bench_torch: distill needs a teacher config\n")
        sys.exit(2)
    if a["iters"] < 1 or a["warmup"] < 0 or a["batch"] < 1 or a["threads"] < 1:
        sys.stderr.write("bench_torch: --iters, --batch, --threads must be >= 1, --warmup >= 0\n")
        sys.exit(2)
    return a


def check(cfg, batch):
    """Logits and gradients (float64) and the frozen inference path (float32) vs torch_check."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_check as tc
    torch.manual_seed(1)
    spec = tc.param_spec(cfg)
    P = {}
    for n, shape in spec.items():
        if n.endswith("/gamma"):
            P[n] = 1.0 + 0.1 * torch.randn(shape, dtype=torch.float64)
        elif n.endswith("/beta") or n.endswith("/bias"):
            P[n] = 0.1 * torch.randn(shape, dtype=torch.float64)
        else:
            P[n] = torch.randn(shape, dtype=torch.float64) + 0.05  # nonzero mean: WS matters
    x = torch.rand(batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"], dtype=torch.float64)
    y = torch.randint(0, cfg["num_classes"], (batch,))
    want_logits, want_loss, want_grads = tc.loss_and_grads(P, x, y, cfg)
    m = BiTResNetV2(cfg).double()
    m.load_bit(P)
    n_params = sum(p.numel() for p in m.parameters())
    logits = m(x)
    F.cross_entropy(logits, y).backward()
    G = m.grads_bit()
    worst = []

    def rel(a, b):
        return float((a - b).abs().max() / (b.abs().max() + 1e-300))
    worst.append(("logits (float64)", rel(logits.detach(), want_logits)))
    gworst = max((rel(G[n].detach(), want_grads[n]), n) for n in spec)
    worst.append(("grads (float64, worst: %s)" % gworst[1], gworst[0]))
    mf = BiTResNetV2(cfg)
    mf.load_bit({n: t.float() for n, t in P.items()})
    mf.freeze()
    with torch.no_grad():
        worst.append(("frozen inference logits (float32)", rel(mf(x.float()).double(), want_logits)))
    ok = True
    for what, r in worst:
        tol = 1e-10 if "float64" in what else 1e-4
        ok &= r <= tol
        print("%s %s: max abs err / max abs = %.3g (tol %g)" % ("ok  " if r <= tol else "FAIL", what, r, tol))
    pspec = sum(math.prod(s) for s in spec.values())
    print("%s parameter count %d (param_spec %d)" % ("ok  " if n_params == pspec else "FAIL", n_params, pspec))
    return 0 if ok and n_params == pspec else 1


def main(argv):
    a = parse_args(argv)
    cfg = json.loads(a["student"])
    torch.set_num_threads(a["threads"])
    if a["kind"] == "check":
        torch.set_default_dtype(torch.float32)
        return check(cfg, min(a["batch"], 4))
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(3)
    fmt = torch.channels_last if a["channels_last"] else torch.contiguous_format
    kind, B = a["kind"], a["batch"]
    student = BiTResNetV2(cfg).to(memory_format=fmt)
    teacher = BiTResNetV2(json.loads(a["teacher"])).to(memory_format=fmt) if kind == "distill" else None
    if teacher is not None:
        tc = teacher.cfg
        if (tc["in_channels"], tc["image_size"], tc["num_classes"]) != \
                (cfg["in_channels"], cfg["image_size"], cfg["num_classes"]):
            sys.stderr.write("bench_torch: teacher and student disagree on input or classes\n")
            return 2
        teacher.eval()
        if a["bf16"]:
            teacher = teacher.to(torch.bfloat16)
        teacher.freeze()  # fixed teacher weights: standardized once, as distilld caches them
        for p in teacher.parameters():
            p.requires_grad_(False)
    S, C, K = cfg["image_size"], cfg["in_channels"], cfg["num_classes"]
    raw = torch.rand(B, C, S, S, generator=gen).contiguous(memory_format=fmt)
    labels = torch.randint(0, K, (B,), generator=gen)
    opt = make_optimizer(student) if kind != "infer" else None
    if kind == "infer":
        student.eval()
        if a["bf16"]:
            student = student.to(torch.bfloat16)
        student.freeze()
    low = torch.bfloat16 if a["bf16"] else torch.float32
    mixed = (kind == "train" and a["bf16"]) or a["bf16_student"]

    def trained(x):  # the trained model's logits, in float; its forward mixed-precision bf16 if asked
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=mixed):
            return student(x).float()

    def step():
        if kind == "train":
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(trained(raw), labels).backward()
            clip_and_step(student, opt)
        elif kind == "distill":
            with torch.no_grad():
                images = mixup(augment(raw, gen), gen).contiguous(memory_format=fmt)
                tlogits = teacher(images.to(low)).float()
            opt.zero_grad(set_to_none=True)
            distill_loss(trained(images), tlogits).backward()
            clip_and_step(student, opt)
        else:
            with torch.no_grad():
                student(raw.to(low))

    times = []
    for it in range(-a["warmup"], a["iters"]):
        t0 = time.perf_counter()
        step()
        if it >= 0:
            times.append(time.perf_counter() - t0)
    times.sort()
    n = len(times)
    median = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    flops = student.forward_flops() * (3.0 if kind in ("train", "distill") else 1.0) * B
    if teacher is not None:
        flops += teacher.forward_flops() * B
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"impl": "pytorch", "kind": kind, "batch": B, "threads": a["threads"],
                      "images_per_second": round(B / median, 1), "gflops": round(flops / median * 1e-9, 1),
                      "peak_rss_mb": round(rss, 1), "params": sum(p.numel() for p in student.parameters()),
                      "torch": "%s, %s" % (torch.__version__,
                                           "channels_last" if a["channels_last"] else "NCHW"),
                      "format": "channels_last" if a["channels_last"] else "NCHW",
                      "precision": "bfloat16" if a["bf16"] else "float32",
                      "student_precision": "bfloat16" if a["bf16_student"] else "float32"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
