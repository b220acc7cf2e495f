"""The photo datasets of core/images.c against reference readers: JPEG folders
(RGB, grayscale, CMYK; corrupt, truncated, empty class) decoded by
tests/images_dump and by Pillow, the decoded-image cache (reuse, invalidation,
a damaged cache), the seeded 80/20 split of a flat folder, the MAT-file reader
on the real Flowers102 .mat files and on files scipy writes, and a generated
Flowers102 tree that `distilld run` trains on for a few steps.

Usage: images_check.py BUILD_DIR. Prints "ok"/"FAIL" per case and ends with
"N passed, N failed"; exits 1 if anything failed."""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import scipy.io
from PIL import Image

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
DUMP = os.path.join(BUILD, "tests", "images_dump")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures", "flowers102")
TMP = tempfile.mkdtemp(prefix="distilld-images-")
passed = failed = 0


class Failure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failure(message)


def case(fn):
    global passed, failed
    name = fn.__name__.replace("_", " ")
    try:
        fn()
        print("ok   " + name)
        passed += 1
    except Failure as e:
        print("FAIL %s: %s" % (name, e))
        failed += 1
    except Exception as e:  # a crash in the test is a failure too
        print("FAIL %s: %r" % (name, e))
        failed += 1
    sys.stdout.flush()
    return fn


def dump(*args, expect_ok=True):
    r = subprocess.run([DUMP] + [str(a) for a in args], capture_output=True, text=True)
    if expect_ok:
        check(r.returncode == 0, "images_dump %s: exit %d: %s" % (" ".join(map(str, args)), r.returncode, r.stderr.strip()))
    return r


def load_dump(out_dir):
    labels = np.load(os.path.join(out_dir, "labels.npy"))
    images = [np.load(os.path.join(out_dir, "image-%05d.npy" % i)) for i in range(len(labels))]
    return labels, images


def pattern(h, w, seed):
    """A smooth colour image (JPEG keeps it close), (h, w, 3) uint8."""
    y, x = np.mgrid[0:h, 0:w]
    r = 128 + 100 * np.sin(x / 5.0 + seed)
    g = 128 + 100 * np.cos(y / 7.0 + 2 * seed)
    b = 128 + 90 * np.sin((x + y) / 9.0 + 3 * seed)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def save(path, img, mode="RGB", quality=95):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(img, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, "JPEG", quality=quality)


def reference(path):
    """Pillow's decode as (3, H, W) floats."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)


# ---- a folder with train/ and test/ -----------------------------------------

ROOT = os.path.join(TMP, "folder")
FILES = {}  # split -> [(path, label)] in the order the loader must give
for split, count in (("train", 3), ("test", 2)):
    FILES[split] = []
    for label, cls in enumerate(["a_rgb", "b_gray", "c_cmyk"]):
        mode = {"a_rgb": "RGB", "b_gray": "L", "c_cmyk": "CMYK"}[cls]
        for i in range(count):
            h, w = [(32, 48), (48, 32), (32, 32)][i % 3]
            p = os.path.join(ROOT, split, cls, "img%02d.jpg" % i)
            save(p, pattern(h, w, label * 10 + i + (split == "test")), mode)
            FILES[split].append((p, label))
# ignored: not a .jpg/.jpeg, hidden
with open(os.path.join(ROOT, "train", "a_rgb", "notes.txt"), "w") as f:
    f.write("not an image\n")
shutil.copy(FILES["train"][0][0], os.path.join(ROOT, "train", "a_rgb", ".hidden.jpg"))


@case
def decoded_pixels_match_pillow_rgb_grayscale_cmyk():
    out = os.path.join(TMP, "dump-full")
    r = dump("folder", ROOT, "train", 32, "-", out)
    check(r.stdout.startswith("9 images, 3 classes"), "loader says: %r" % r.stdout)
    labels, images = load_dump(out)
    check(list(labels) == [l for _, l in FILES["train"]], "labels %r" % list(labels))
    worst = {}
    for (path, label), got in zip(FILES["train"], images):
        want = reference(path)
        check(got.shape == want.shape, "%s: shape %r, Pillow %r" % (path, got.shape, want.shape))
        diff = float(np.abs(got - want).max())
        kind = ["rgb", "gray", "cmyk"][label]
        worst[kind] = max(worst.get(kind, 0), diff)
    print("     max |distilld - Pillow| per kind at full size (0..255): %r" % worst)
    # both are libjpeg-turbo: the same decoder; CMYK -> RGB rounds differently
    check(worst["rgb"] <= 1 and worst["gray"] <= 1, "RGB/gray decode differs: %r" % worst)
    check(worst["cmyk"] <= 2, "CMYK decode differs: %r" % worst)


@case
def decoding_near_the_target_size_keeps_the_short_side_and_the_picture():
    out = os.path.join(TMP, "dump-small")
    dump("folder", ROOT, "train", 20, "-", out)
    _, images = load_dump(out)
    worst = 0.0
    for (path, _), got in zip(FILES["train"], images):
        src = Image.open(path).convert("RGB")
        check(min(got.shape[1:]) == 20, "%s: short side %d, not 20" % (path, min(got.shape[1:])))
        w, h = src.size
        want_hw = (20, round(20 * w / h)) if h <= w else (round(20 * h / w), 20)
        check(got.shape[1:] == want_hw, "%s: %r, expected %r" % (path, got.shape[1:], want_hw))
        ref = np.asarray(src.resize((want_hw[1], want_hw[0]), Image.BILINEAR), dtype=np.float32).transpose(2, 0, 1)
        worst = max(worst, float(np.abs(got - ref).mean()))
    print("     DCT-scaled decode + bilinear vs Pillow's resize: mean |diff| <= %.2f levels" % worst)
    check(worst < 6, "scaled images differ from Pillow's by %.2f levels on average" % worst)


@case
def the_cache_is_reused_and_rebuilt_when_the_folder_changes():
    cache = os.path.join(TMP, "cache")
    first = dump("folder", ROOT, "test", 32, cache, os.path.join(TMP, "c1"))
    check("decoded" in first.stderr, "first load did not decode: %r" % first.stderr)
    files = os.listdir(cache)
    check(len(files) == 1 and files[0].endswith(".cache"), "cache dir holds %r" % files)
    second = dump("folder", ROOT, "test", 32, cache, os.path.join(TMP, "c2"))
    check("decoded" not in second.stderr, "second load decoded again: %r" % second.stderr)
    a, b = load_dump(os.path.join(TMP, "c1")), load_dump(os.path.join(TMP, "c2"))
    check(all((x == y).all() for x, y in zip(a[1], b[1])), "cached pixels differ from decoded ones")
    # another resize_small is another cache
    third = dump("folder", ROOT, "test", 16, cache, os.path.join(TMP, "c3"))
    check("decoded" in third.stderr and len(os.listdir(cache)) == 2, "resize 16 reused the 32 cache")
    # a changed image: decoded again, and the new pixels show
    path = FILES["test"][0][0]
    save(path, 255 - pattern(32, 48, 99))
    changed = dump("folder", ROOT, "test", 32, cache, os.path.join(TMP, "c4"))
    check("decoded" in changed.stderr, "a changed file did not invalidate the cache")
    got = load_dump(os.path.join(TMP, "c4"))[1][0]
    check(np.abs(got - reference(path)).max() <= 1, "the rebuilt cache has the old image")
    # an added image
    extra = os.path.join(ROOT, "test", "b_gray", "img99.jpg")
    save(extra, pattern(32, 32, 7), "L")
    added = dump("folder", ROOT, "test", 32, cache, os.path.join(TMP, "c5"))
    check("decoded" in added.stderr and added.stdout.startswith("7 images"), "an added file: %r" % added.stdout)
    os.remove(extra)
    # a damaged cache file is not used
    dump("folder", ROOT, "test", 32, cache, os.path.join(TMP, "c6"))
    for name in os.listdir(cache):
        p = os.path.join(cache, name)
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) - 10)
    damaged = dump("folder", ROOT, "test", 32, cache, os.path.join(TMP, "c7"))
    check("decoded" in damaged.stderr, "a truncated cache was used")
    check(all((x == y).all() for x, y in zip(load_dump(os.path.join(TMP, "c6"))[1], load_dump(os.path.join(TMP, "c7"))[1])),
          "the rebuilt cache differs")


def bad_folder(name, make):
    root = os.path.join(TMP, name)
    for label in range(2):
        for i in range(2):
            save(os.path.join(root, "class%d" % label, "ok%d.jpg" % i), pattern(32, 32, i))
    make(root)
    return root


@case
def corrupt_truncated_and_empty_inputs_are_refused_naming_the_file():
    def corrupt(root):
        with open(os.path.join(root, "class1", "broken.jpg"), "wb") as f:
            f.write(os.urandom(3000))

    def truncated(root):
        src = os.path.join(root, "class0", "ok0.jpg")
        data = open(src, "rb").read()
        with open(os.path.join(root, "class0", "cut.jpg"), "wb") as f:
            f.write(data[:len(data) // 2])

    def empty_class(root):
        os.makedirs(os.path.join(root, "class2"))
        with open(os.path.join(root, "class2", "readme.txt"), "w") as f:
            f.write("no images\n")

    for name, make, needle in (("corrupt", corrupt, "broken.jpg"), ("truncated", truncated, "cut.jpg"),
                               ("empty", empty_class, "class2")):
        root = bad_folder(name, make)
        r = dump("split", root, 32, "-", os.path.join(TMP, "out-" + name), expect_ok=False)
        check(r.returncode != 0, "%s: accepted" % name)
        check(needle in r.stderr, "%s: the message does not name %s: %r" % (name, needle, r.stderr.strip()))
    os.makedirs(os.path.join(TMP, "no-classes"))
    r = dump("split", os.path.join(TMP, "no-classes"), 32, "-", os.path.join(TMP, "out-none"), expect_ok=False)
    check(r.returncode != 0 and "no class sub-folders" in r.stderr, "no classes: %r" % r.stderr.strip())
    r = dump("folder", os.path.join(TMP, "missing"), "-", 32, "-", os.path.join(TMP, "out-missing"), expect_ok=False)
    check(r.returncode != 0 and "missing" in r.stderr, "missing root: %r" % r.stderr.strip())


@case
def a_flat_folder_is_split_80_20_per_class_the_same_every_time():
    root = os.path.join(TMP, "flat")
    counts = [10, 7, 2]
    for label, n in enumerate(counts):
        for i in range(n):
            save(os.path.join(root, "k%d" % label, "i%02d.jpg" % i), pattern(32, 32, label * 50 + i))
    out1, out2 = os.path.join(TMP, "flat1"), os.path.join(TMP, "flat2")
    dump("split", root, 32, "-", out1)
    dump("split", root, 32, os.path.join(TMP, "flat-cache"), out2)
    tr, te = load_dump(os.path.join(out1, "train")), load_dump(os.path.join(out1, "test"))
    for label, n in enumerate(counts):
        n_test = int((te[0] == label).sum())
        check(n_test == max(1, round(n / 5)) if n >= 2 else n_test == 0, "class %d: %d of %d to test" % (label, n_test, n))
        check(int((tr[0] == label).sum()) == n - n_test, "class %d: train count" % label)
    # every image once, in one of the two
    ref = {}
    for label, n in enumerate(counts):
        for i in range(n):
            ref[reference(os.path.join(root, "k%d" % label, "i%02d.jpg" % i)).tobytes()] = label
    got = [(img.tobytes(), l) for part in (tr, te) for l, img in zip(part[0], part[1])]
    check(len(got) == sum(counts) and len({g for g, _ in got}) == sum(counts), "images lost or doubled")
    check(all(ref.get(g) == l for g, l in got), "an image with the wrong label or pixels")
    tr2 = load_dump(os.path.join(out2, "train"))
    check(all((a == b).all() for a, b in zip(tr[1], tr2[1])) and list(tr[0]) == list(tr2[0]), "the split changed")


# ---- MAT files ---------------------------------------------------------------

def read_mat(path, name):
    r = dump("mat", path, name)
    lines = r.stdout.split()
    count = int(lines[0])
    return np.array([float(x) for x in lines[1:1 + count]])


@case
def the_real_flowers102_mat_files_parse():
    labels = read_mat(os.path.join(FIXTURES, "imagelabels.mat"), "labels")
    ref = scipy.io.loadmat(os.path.join(FIXTURES, "imagelabels.mat"))["labels"].ravel(order="F")
    check(len(labels) == 8189 and (labels == ref).all(), "labels: %d, differ from scipy" % len(labels))
    check(labels.min() == 1 and labels.max() == 102, "labels range %g..%g" % (labels.min(), labels.max()))
    setid = scipy.io.loadmat(os.path.join(FIXTURES, "setid.mat"))
    for name, n in (("trnid", 1020), ("valid", 1020), ("tstid", 6149)):
        ids = read_mat(os.path.join(FIXTURES, "setid.mat"), name)
        check(len(ids) == n and (ids == setid[name].ravel(order="F")).all(), "%s: %d ids" % (name, len(ids)))
    check(len(set(read_mat(os.path.join(FIXTURES, "setid.mat"), "trnid")) | set(read_mat(os.path.join(FIXTURES, "setid.mat"), "valid"))
              | set(read_mat(os.path.join(FIXTURES, "setid.mat"), "tstid"))) == 8189, "splits do not cover the images")


@case
def mat_files_scipy_writes_parse_and_bad_ones_are_refused():
    a = np.arange(1, 301, dtype=np.uint16).reshape(20, 15)
    b = np.linspace(-2, 2, 7)
    for compress in (False, True):
        path = os.path.join(TMP, "x%d.mat" % compress)
        scipy.io.savemat(path, {"first": b, "ids": a, "small": np.array([[7]], dtype=np.uint8)}, do_compression=compress)
        check((read_mat(path, "ids") == a.ravel(order="F")).all(), "uint16 array (compressed %s)" % compress)
        check(np.allclose(read_mat(path, "first"), b), "double array (compressed %s)" % compress)
        check(list(read_mat(path, "small")) == [7], "a one-element array (compressed %s)" % compress)
    data = open(os.path.join(TMP, "x1.mat"), "rb").read()
    for name, blob, needle in (("cut", data[:len(data) - 40], "x"), ("text", b"hello" * 40, "not a MAT-file"),
                               ("short", data[:100], "not a MAT-file")):
        path = os.path.join(TMP, "bad-%s.mat" % name)
        with open(path, "wb") as f:
            f.write(blob)
        r = dump("mat", path, "small", expect_ok=False)  # the last array: the cut one
        check(r.returncode != 0 and path in r.stderr, "%s: %r" % (name, r.stderr.strip()))
    r = dump("mat", os.path.join(TMP, "x0.mat"), "absent", expect_ok=False)
    check(r.returncode != 0 and "no array named absent" in r.stderr, "absent array: %r" % r.stderr.strip())


# ---- a generated Flowers102 tree ----------------------------------------------

FLOWERS = os.path.join(TMP, "flowers102")


def make_flowers():
    os.makedirs(os.path.join(FLOWERS, "jpg"))
    for name in ("imagelabels.mat", "setid.mat"):
        shutil.copy(os.path.join(FIXTURES, name), FLOWERS)
    rng = random.Random(0)
    labels = scipy.io.loadmat(os.path.join(FIXTURES, "imagelabels.mat"))["labels"].ravel()
    for i in range(1, 8190):
        h, w = rng.choice([(24, 30), (30, 24), (24, 24), (24, 36)])
        img = pattern(h, w, int(labels[i - 1]) * 0.37)  # the class shows in the picture
        Image.fromarray(img).save(os.path.join(FLOWERS, "jpg", "image_%05d.jpg" % i), quality=90)
    return labels


@case
def a_generated_flowers102_tree_loads_its_splits_and_trains():
    labels = make_flowers()
    setid = scipy.io.loadmat(os.path.join(FIXTURES, "setid.mat"))
    out = os.path.join(TMP, "fl-train")
    r = dump("flowers", FLOWERS, "train", 24, os.path.join(TMP, "fl-cache"), out)
    check(r.stdout.startswith("1020 images, 102 classes"), "train: %r" % r.stdout)
    got = np.load(os.path.join(out, "labels.npy"))
    want = labels[setid["trnid"].ravel() - 1] - 1
    check((got == want).all(), "train labels differ from imagelabels[trnid] - 1")
    first = reference(os.path.join(FLOWERS, "jpg", "image_%05d.jpg" % int(setid["trnid"].ravel()[0])))
    check(np.abs(np.load(os.path.join(out, "image-00000.npy")) - first).max() <= 1, "first training image pixels")
    spec = {
        "kind": "train",
        "dataset": {"format": "flowers102", "path": FLOWERS, "resize_small": 24, "val_size": 64, "test_size": 128},
        "model": {"depth": [1, 1], "base_width": 8, "gn_groups": 4, "stem": "bit", "image_size": 20},
        "batch_size": 16, "steps": 4, "warmup_steps": 1, "eval_every": 4, "checkpoint_every": 2, "threads": 1,
    }
    spec_path = os.path.join(TMP, "flowers.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    run_dir = os.path.join(TMP, "fl-run")
    r = subprocess.run([os.path.join(BUILD, "distilld"), "run", spec_path, "--run-dir", run_dir, "--cache-dir",
                        os.path.join(TMP, "fl-cache")], capture_output=True, text=True, timeout=600)
    check(r.returncode == 0, "distilld run: exit %d: %s %s" % (r.returncode, r.stdout[-800:], r.stderr[-800:]))
    check("step 4/4" in r.stdout and "test top-1" in r.stdout, "no steps or evaluation printed: %s" % r.stdout[-600:])
    check(os.path.exists(os.path.join(run_dir, "weights.safetensors")), "no weights")
    # train came from the cache the first load left; val and test were decoded
    decoded = [l for l in r.stderr.splitlines() if l.startswith("decoded ")]
    check(len(decoded) == 2 and all(" val:" in l or " test:" in l for l in decoded), "decoded: %r" % decoded)


print("%d passed, %d failed" % (passed, failed))
shutil.rmtree(TMP, ignore_errors=True)
sys.exit(1 if failed else 0)
