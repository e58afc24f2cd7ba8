"""Issue 28, items 7-9: specs that used to crash, hang, mislead or flood the terminal.

Complex keys, YAML 1.1 surprises (`1:30`, `017`), weights that overflow, a
reference that never ends (/dev/zero), `factory plan` at the largest count, long
echoed keys, `s3:/` with one slash, validate showing every problem in one pass,
and temp files left behind by a full disk."""

from __future__ import annotations

import errno
import importlib
import os
import struct
import subprocess
import sys
import zlib

import pytest
import yaml
from typer.testing import CliRunner

from factory.cli import app
from factory.spec import SpecError, parse_spec, spec_from_dict
from factory.storage import uri as U

HEAD = "name: t\ncount: 10\ndefects:\n  - class: crack\n"
MAX_LINE = 300


def refused(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as e:
        parse_spec(text, "s.yaml")
    return e.value.problems


def cli(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=200)


def write(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def long_lines(output: str) -> list[int]:
    return [len(line) for line in output.splitlines() if len(line) >= MAX_LINE]


# --- item 7: YAML ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["? [a, b]\n: 1\n", "? {a: 1}\n: 1\n", "[a, b]: 1\n"])
def test_a_complex_key_is_one_line_naming_the_line(key):
    found = refused(HEAD + key)
    assert len(found) == 1 and "line 5" in found[0][1] and "key" in found[0][1], found


def test_yaml_1_1_sexagesimal_and_octal_are_not_silently_converted():
    found = refused(HEAD.replace("count: 10", "count: 1:30"))
    assert ("count", "expected an integer, got '1:30'") in found, found
    found = refused(HEAD + "seed: 017\n")
    assert len(found) == 1 and "line 5" in found[0][1] and "017" in found[0][1], found
    assert parse_spec(HEAD + "seed: 0o17\n").seed == 15  # YAML 1.2's octal
    assert parse_spec(HEAD + "seed: 0x1F\n").seed == 31
    assert parse_spec(HEAD + "seed: 17\n").seed == 17


def test_yaml_1_2_plain_words_stay_text():
    """`no`, `on`, `off`, `y` and dates are strings in YAML 1.2 (1.1 made them booleans and dates)."""
    assert parse_spec(HEAD.replace("name: t", "name: no")).name == "no"
    assert parse_spec(HEAD.replace("name: t", "name: 2024-01-01")).name == "2024-01-01"
    assert parse_spec(HEAD.replace("class: crack", "class: off")).class_names == ["off"]
    s = parse_spec(HEAD + "negatives: 1e-1\noutput: {val_fraction: .5}\n")  # 1.2 floats need no dot
    assert s.negatives == 0.1 and s.output.val_fraction == 0.5
    assert refused(HEAD + "negatives: .inf\n")[0][0] == "negatives"
    assert parse_spec(HEAD + "retrain: {on: manual, real_train: a, real_eval: b}\n").retrain.on == "manual"


def test_huge_weights_are_refused_by_validate_not_crashing_plan(tmp_path):
    text = HEAD.replace("class: crack", "class: crack\n    weight: 1e308") + "  - class: black_spot\n    weight: 1e308\n"
    found = refused(text)
    assert any(loc == "defects[0].weight" for loc, _ in found), found
    gens = HEAD + "generators:\n  - {kind: procedural, weight: 1e308}\n  - {kind: procedural, weight: 1e308}\n"
    assert any(loc == "generators[0].weight" for loc, _ in refused(gens))
    r = cli("plan", write(tmp_path, text))
    assert r.exit_code == 2 and "IndexError" not in r.output, r.output


def test_an_unknown_long_key_is_cut_short_on_every_line(tmp_path):
    text = HEAD + "k" * 1000 + ": 1\ndomain:\n  " + "z" * 1000 + ": 1\n"
    with pytest.raises(SpecError) as e:
        parse_spec(text, "s.yaml")
    assert len(e.value.lines()) == 2 and all(len(line) < MAX_LINE - 20 for line in e.value.lines()), e.value.lines()
    r = cli("validate", write(tmp_path, text))
    assert r.exit_code == 2 and "unknown key" in r.output and not long_lines(r.output), r.output


def test_a_spec_that_never_ends_is_refused_after_a_bounded_read():
    """`factory validate /dev/zero`: a device has size 0 to stat; the read itself is bounded."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from factory.spec import SpecError, load_spec\n"
            "try:\n    load_spec('/dev/zero')\nexcept SpecError as e:\n    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "refused: /dev/zero: more than" in r.stdout, r.stdout + r.stderr[-2000:]


# --- item 7: references are read within bounds ------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (and no pixel data to speak of)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_reference_that_never_ends_is_refused_without_reading_it():
    """/dev/zero used to be read to the end (22 GB before the kernel stepped in). A
    subprocess with 3 GB of address space: the old code fails there, not the machine."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from factory.generators.references import check_references, read_grey\n"
            "print(check_references(['/dev/zero']))\n"
            "try:\n    read_grey('/dev/zero')\nexcept ValueError as e:\n    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not a regular file" in r.stdout and "refused: /dev/zero" in r.stdout, r.stdout


def test_oversized_and_huge_claimed_references_are_refused(tmp_path):
    from factory.generators.references import MAX_REFERENCE_BYTES, read_grey

    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_REFERENCE_BYTES + 1)
    with pytest.raises(ValueError, match="bytes"):
        read_grey(str(big))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(60_000, 60_000))
    with pytest.raises(ValueError, match="pixels"):
        read_grey(str(bomb))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not an image"):
        read_grey(str(junk))


def test_validate_with_style_fit_on_dev_zero_is_a_spec_error(tmp_path):
    """The issue's case, through the CLI (in a subprocess of 3 GB, as above)."""
    spec = write(tmp_path, HEAD + "domain:\n  style: fit\n  references: [/dev/zero]\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            f"from factory.cli import app; sys.argv = ['factory', 'validate', {spec!r}]; app()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "domain.references: /dev/zero: not a regular file" in out, out[-2000:]


# --- item 7: plan at the largest count ------------------------------------------------------
def test_plan_summary_of_ten_million_items_plans_a_bounded_sample(tmp_path, monkeypatch):
    from factory.cli import spec_cmds

    P = importlib.import_module("factory.planning.plan")  # the package's `plan` is the function

    planned = []
    item = P._Planner.item
    monkeypatch.setattr(P._Planner, "item", lambda self, i: planned.append(i) or item(self, i))
    r = cli("plan", write(tmp_path, HEAD.replace("count: 10", "count: 10000000")), "--show", "2")
    assert r.exit_code == 0, r.output
    assert len(planned) <= spec_cmds.SUMMARY_ITEMS <= 20_000
    assert "10,000,000 items" in r.output and f"first {spec_cmds.SUMMARY_ITEMS:,}" in r.output, r.output
    assert "-0000000" in r.output and "-0000001" in r.output  # --show still prints the first items


def test_plan_summary_of_a_small_plan_is_exact(tmp_path):
    r = cli("plan", write(tmp_path, HEAD.replace("count: 10", "count: 40")))
    assert r.exit_code == 0 and "40 items" in r.output and "first" not in r.output, r.output


# --- item 8: output.uri ------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["s3:/my-bucket/x", "s3:my-bucket", "file:/tmp/x", "S3:/b", "s3:"])
def test_a_malformed_scheme_is_refused(uri):
    found = refused(HEAD + f"output: {{uri: '{uri}'}}\n")
    assert any(loc == "output.uri" and "s3://" in m for loc, m in found), found
    with pytest.raises(U.StorageError, match="s3://"):
        U.to_uri(uri)
    found = refused(HEAD + f"retrain: {{real_train: '{uri}', real_eval: x}}\n")
    assert any(loc == "retrain.real_train" for loc, _ in found), found


def test_a_bare_output_path_is_printed_as_the_file_uri_it_became(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("validate", write(tmp_path, HEAD + "output: {uri: out/data}\n"))
    assert r.exit_code == 0, r.output
    assert f"file://{tmp_path.resolve()}/out/data" in " ".join(r.output.split()), r.output
    assert U.to_uri("s3://bucket/x/") == "s3://bucket/x"


# --- item 9: every problem in one pass -------------------------------------------------------
def test_validate_shows_every_layer_in_one_pass(tmp_path):
    text = ("name: t\ncount: -5\ndefects:\n  - class: crack\n  - class: crack\n"
            "generators:\n  - kind: procedural\n    params: {bakground: plain}\n")
    r = cli("validate", write(tmp_path, text))
    out = " ".join(r.output.split())
    assert r.exit_code == 2
    assert "count: must be > 0, got -5" in out, out
    assert "defects[1].class: duplicate class name 'crack'" in out, out
    assert "generators[0].params.bakground: unknown key 'bakground'" in out, out


def test_problems_of_every_model_layer_come_together():
    """Cross-field checks run beside the field checks, not only once those pass."""
    d = {"name": "T", "count": -5, "image": {"width": 64, "height": 64}, "classes_per_image": [1, 3],
         "defects": [{"class": "crack"}], "generators": [{"kind": "procedural", "weight": 0}]}
    with pytest.raises(SpecError) as e:
        spec_from_dict(d, "s.yaml")
    assert {loc for loc, _ in e.value.problems} == {"name", "count", "generators", "classes_per_image"}, e.value.problems
    d["defects"] = [{"class": "crack", "boxes": {"size": {"min": 0.01, "max": 0.1}}}, {"class": "crack"}]
    with pytest.raises(SpecError) as e:
        spec_from_dict(d, "s.yaml")
    assert {loc for loc, _ in e.value.problems} == {"name", "count", "generators", "defects[1].class"}, e.value.problems


def test_validate_of_a_bad_generator_keeps_the_other_generators_problems(tmp_path):
    text = HEAD + ("generators:\n  - {kind: procedural, weight: -1}\n"
                   "  - {kind: procedural, params: {bakground: plain}}\n  - {kind: nope}\n")
    out = " ".join(cli("validate", write(tmp_path, text)).output.split())
    assert "generators[0].weight: must be >= 0" in out, out
    assert "generators[1].params.bakground: unknown key" in out, out
    assert "generators[2].kind" in out, out


# --- item 7: a full disk leaves no temp files --------------------------------------------
class _FullDisk:
    """A file that takes a few bytes, then fails as a full disk does."""

    def __init__(self, path, mode):
        self.f = open(path, mode)

    def write(self, data):
        self.f.write(data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("how", ["write_bytes", "create_exclusive", "write_file"])
def test_a_full_disk_leaves_no_tmp_files(tmp_path, monkeypatch, how):
    target = tmp_path / "out" / "x.bin"
    if how == "write_file":
        src = tmp_path / "src.bin"
        src.write_bytes(b"data" * 100)

        def copy(a, b):
            with _FullDisk(b, "wb") as f:
                f.write(open(a, "rb").read())
        monkeypatch.setattr(U.shutil, "copyfile", copy)
        call = lambda: U.write_file(str(target), src)  # noqa: E731
    else:
        monkeypatch.setattr(U, "open", _FullDisk, raising=False)
        call = lambda: getattr(U, how)(str(target), b"data" * 100)  # noqa: E731
    with pytest.raises(U.StorageError, match="No space left"):
        call()
    assert os.listdir(target.parent) == []


def test_yaml_dump_of_a_valid_spec_reads_back(tmp_path):
    """The 1.2 reader reads what PyYAML writes (spec files are often written by scripts)."""
    s = parse_spec(yaml.safe_dump(spec_from_dict(yaml.safe_load(HEAD)).to_yaml_dict()))
    assert s.class_names == ["crack"] and s.count == 10


def test_a_non_image_reference_is_refused_after_ultralytics_wrapped_pil(tmp_path):
    """ultralytics replaces PIL's Image.open with a wrapper that, for an unknown format,
    tries to import an optional HEIF plugin: the error is then an ImportError."""
    pytest.importorskip("ultralytics")
    import ultralytics.utils.patches  # noqa: F401  (installs the wrapper, as training does)

    from factory.generators.references import read_grey

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not an image"):
        read_grey(str(junk))
