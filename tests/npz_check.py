#!/usr/bin/python3
"""npz_check.py - BiT .npz checkpoints, as numpy writes them, against PyTorch (DESIGN.md section 3).

Usage:  /usr/bin/python3 tests/npz_check.py write DIR
        /usr/bin/python3 tests/npz_check.py compare DIR

write   makes random BiT ResNetV2 weights with BiT's names and HWIO layouts and saves them as
        .npz files, plus inputs and the logits of the PyTorch model of tests/torch_check.py
        (float64) on them:
          A_stored.npz            stem bit, 3x224x224 -> 5, depth [2,1]: np.savez (members stored)
          A_deflated_variants.npz the same weights, np.savez_compressed (deflated), every conv but
                                  the root named standardized_conv2d_1, _2, ... as Keras numbers them
          A_x.npy, A_ref.npy      2 images and their reference logits
          B_zip64.npz             stem small, 1x28x28 -> 10, depth [1,2]: written here with zip64
                                  everywhere (sizes and offsets 0xFFFFFFFF in the headers, the values
                                  in zip64 extra fields; zip64 end record), stored and deflated
                                  members alternating; checked with Python's zipfile and np.load
          B_x.npy, B_ref.npy      3 images and their reference logits
          C_teacher.npz           stem bit, 1 channel -> 10: a teacher for a Fashion-MNIST distill job
          A_missing.npz, A_misshaped.npz, A_extra.npz, A_crc.npz   broken copies of A
        and checks its own files (methods, zip64 extra fields, names).
compare reads DIR/{A_stored,A_deflated_variants,B_zip64}.predicted.npy (from `distilld predict`)
        and compares each with its reference: |got - want| <= 1e-4 * max|want| + 1e-4 * |want|
        elementwise, the measure of tests/torch_check.py.

Each prints "ok   NAME" / "FAIL NAME: ..." lines and ends with "N passed, N failed"; the exit
status is 0 only if everything passed.
"""

import io
import os
import struct
import sys
import zipfile
import zlib

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch_check  # noqa: E402  the PyTorch BiT model

MODELS = {
    "A": {"depth": [2, 1], "base_width": 32, "width": 1, "gn_groups": 32, "stem": "bit",
          "in_channels": 3, "num_classes": 5, "image_size": 224, "batch": 2, "seed": 1},
    "B": {"depth": [1, 2], "base_width": 32, "width": 1, "gn_groups": 32, "stem": "small",
          "in_channels": 1, "num_classes": 10, "image_size": 28, "batch": 3, "seed": 2},
    "C": {"depth": [1, 1], "base_width": 32, "width": 1, "gn_groups": 32, "stem": "bit",
          "in_channels": 1, "num_classes": 10, "image_size": 28, "batch": 1, "seed": 3},
}
PREDICTED = ["A_stored", "A_deflated_variants", "B_zip64"]
ZIP64_EXTRA = 0x0001


def random_weights(cfg):
    """name -> float32 array (HWIO kernels), every parameter non-trivial so that a wrong
    layout, stem or stride changes the logits."""
    rng = np.random.default_rng(cfg["seed"])
    weights = {}
    for name, shape in torch_check.param_spec(cfg).items():
        if name.endswith("/kernel"):
            fan_in = int(np.prod(shape[:-1]))
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith("/gamma"):
            w = rng.uniform(0.5, 1.5, shape)
        else:  # beta, bias
            w = rng.normal(0.0, 0.2, shape)
        weights[name] = w.astype(np.float32)
    return weights


def reference_logits(cfg, weights, x):
    P = {n: torch.from_numpy(w.astype(np.float64)) for n, w in weights.items()}
    with torch.no_grad():
        return torch_check.forward(P, torch.from_numpy(x.astype(np.float64)), cfg).numpy()


def keras_numbered(weights):
    """The names some exports use: the n-th standardized conv after the root is
    standardized_conv2d_n."""
    out, n = {}, 0
    for name, w in weights.items():
        if "/standardized_conv2d/" in name and not name.startswith("resnet/root_block/"):
            n += 1
            name = name.replace("/standardized_conv2d/", "/standardized_conv2d_%d/" % n)
        out[name] = w
    return out


def npy_bytes(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_zip64(path, arrays):
    """An .npz with zip64 records throughout: sizes (and the header offset) 0xFFFFFFFF in
    the local and central headers, the real values in zip64 extra fields, a zip64 end
    record and locator. Members alternate stored / deflated."""
    out, central = bytearray(), bytearray()
    for i, (name, array) in enumerate(arrays.items()):
        data = npy_bytes(array)
        method = 8 if i % 2 else 0
        if method == 8:
            packer = zlib.compressobj(6, zlib.DEFLATED, -15)
            packed = packer.compress(data) + packer.flush()
        else:
            packed = data
        crc = zlib.crc32(data)
        fname = (name + ".npy").encode()
        offset = len(out)
        local_extra = struct.pack("<HHQQ", ZIP64_EXTRA, 16, len(data), len(packed))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0x21, crc,
                           0xFFFFFFFF, 0xFFFFFFFF, len(fname), len(local_extra))
        out += fname + local_extra + packed
        central_extra = struct.pack("<HHQQQ", ZIP64_EXTRA, 24, len(data), len(packed), offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0x21, crc,
                               0xFFFFFFFF, 0xFFFFFFFF, len(fname), len(central_extra), 0, 0, 0, 0,
                               0xFFFFFFFF)
        central += fname + central_extra
    count = len(arrays)
    cd_offset = len(out)
    out += central
    end64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(central),
                       cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(out)


def zip_members(path):
    """(name, method, local extra ids, central extra ids) per member, from the raw headers."""
    raw = open(path, "rb").read()

    def extra_ids(extra):
        ids, pos = [], 0
        while pos + 4 <= len(extra):
            rid, size = struct.unpack_from("<HH", extra, pos)
            ids.append(rid)
            pos += 4 + size
        return ids

    members = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            nlen, elen = struct.unpack_from("<HH", raw, info.header_offset + 26)
            start = info.header_offset + 30 + nlen
            members.append((info.filename, info.compress_type, extra_ids(raw[start:start + elen]),
                            extra_ids(info.extra)))
    return members


class Results(torch_check.Results):
    def finish(self):
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        return 1 if self.failed else 0


def write(res, d):
    A = random_weights(MODELS["A"])
    B = random_weights(MODELS["B"])
    C = random_weights(MODELS["C"])
    for label, weights in (("A", A), ("B", B)):
        cfg = MODELS[label]
        rng = np.random.default_rng(100 + cfg["seed"])
        s = cfg["image_size"]
        x = rng.uniform(-1.0, 1.0, (cfg["batch"], cfg["in_channels"], s, s)).astype(np.float32)
        np.save(os.path.join(d, label + "_x.npy"), x)
        np.save(os.path.join(d, label + "_ref.npy"), reference_logits(cfg, weights, x))

    path = lambda name: os.path.join(d, name)
    np.savez(path("A_stored.npz"), **A)
    np.savez_compressed(path("A_deflated_variants.npz"), **keras_numbered(A))
    write_zip64(path("B_zip64.npz"), B)
    np.savez(path("C_teacher.npz"), **C)

    broken = dict(A)
    del broken["resnet/block1/unit02/b/group_norm/beta"]
    np.savez(path("A_missing.npz"), **broken)
    broken = dict(A)
    broken["resnet/block2/unit01/b/standardized_conv2d/kernel"] = np.zeros((3, 3, 64, 32), np.float32)
    np.savez(path("A_misshaped.npz"), **broken)
    broken = dict(A)
    broken["resnet/block1/unit01/d/standardized_conv2d/kernel"] = np.zeros((1, 1, 32, 32), np.float32)
    np.savez(path("A_extra.npz"), **broken)
    raw = bytearray(open(path("A_stored.npz"), "rb").read())
    with zipfile.ZipFile(path("A_stored.npz")) as z:
        info = z.infolist()[0]
    nlen, elen = struct.unpack_from("<HH", raw, info.header_offset + 26)
    raw[info.header_offset + 30 + nlen + elen + info.file_size - 1] ^= 0x10  # a weight's last byte
    open(path("A_crc.npz"), "wb").write(raw)

    # the files are what this test claims they are
    stored = zip_members(path("A_stored.npz"))
    res.check("A_stored.npz: np.savez stores every member, each with a zip64 extra field in its "
              "local header",
              ["%s: method %d, local extras %s" % (n, m, le) for n, m, le, _ in stored
               if m != zipfile.ZIP_STORED or ZIP64_EXTRA not in le])
    deflated = zip_members(path("A_deflated_variants.npz"))
    convs = sum("/standardized_conv2d/" in n for n in A)
    names = [n for n, _, _, _ in deflated]
    res.check("A_deflated_variants.npz: np.savez_compressed deflates every member; convs named "
              "standardized_conv2d_N",
              ["%s: method %d" % (n, m) for n, m, _, _ in deflated if m != zipfile.ZIP_DEFLATED] +
              ([] if sum("standardized_conv2d_" in n for n in names) == convs - 1 else
               ["expected %d numbered conv names, got %s" % (convs - 1, names)]))
    z64 = zip_members(path("B_zip64.npz"))
    with zipfile.ZipFile(path("B_zip64.npz")) as z:
        bad_member = z.testzip()
    loaded = np.load(path("B_zip64.npz"))
    problems = ["%s: no zip64 extra in its %s header" % (n, "local" if ZIP64_EXTRA not in le else "central")
                for n, _, le, ce in z64 if ZIP64_EXTRA not in le or ZIP64_EXTRA not in ce]
    if {m for _, m, _, _ in z64} != {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}:
        problems.append("members are not a mix of stored and deflated")
    if bad_member is not None:
        problems.append("Python's zipfile finds a bad CRC in %s" % bad_member)
    if sorted(loaded.files) != sorted(B) or any(not np.array_equal(loaded[n], B[n]) for n in B):
        problems.append("np.load does not give back the weights")
    res.check("B_zip64.npz: zip64 sizes and offsets in every header, stored and deflated members; "
              "Python's zipfile and np.load read it", problems)


def compare(res, d):
    for name in PREDICTED:
        label = name.split("_")[0]
        got = os.path.join(d, name + ".predicted.npy")
        if not os.path.isfile(got):
            res.fail(name + ":logits", "no %s (distilld predict failed?)" % got)
            continue
        want = np.load(os.path.join(d, label + "_ref.npy"))
        r = torch_check.check_one(res, name + ":logits vs PyTorch", np.load(got), want)
        if "shape" not in r:
            print("       (max|got - want| / max|want| = %.3g over %d logits)"
                  % (float(np.max(np.abs(np.load(got).astype(np.float64) - want)) / np.max(np.abs(want))),
                     want.size), flush=True)


def main(argv):
    if len(argv) != 3 or argv[1] not in ("write", "compare"):
        sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
        return 2
    torch.set_num_threads(1)
    res = Results()
    (write if argv[1] == "write" else compare)(res, argv[2])
    return res.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
