"""gpucnn.filerules: the bounded JSON parser, the strict .npy header parser, the value and
size checks and the checkpoint metadata schema, each against the hostile inputs it exists
for (issue 22)."""
import inspect
import io
import json
import math

import numpy as np
import pytest

from gpucnn import filerules as F
from gpucnn.models import MODELS


class Refused(ValueError):
    pass


def parse(data, **kw):
    return F.parse_json(data, "f.npz: member m", Refused, **kw)


# ---- JSON ---------------------------------------------------------------------------------
def test_json_within_the_limits_parses():
    doc = {"a": [1, 2.5, -3e-7, None, True], "s": "[[{{ \\\" ]]", "n": {"b": {"c": []}},
           "state": 2 ** 127 + 12345, "ü": "ünïcode"}
    assert parse(json.dumps(doc).encode()) == doc
    assert parse(b"[" * F.JSON_MAX_DEPTH + b"]" * F.JSON_MAX_DEPTH) is not None
    # brackets inside strings are not nesting
    assert parse(json.dumps(["[" * 5000]).encode()) == ["[" * 5000]


@pytest.mark.parametrize("data, rule", [
    (b"[" * 100_000 + b"]" * 100_000, "nested 100000 levels deep (at most 64)"),
    (b'{"a": ' * 5_000 + b"1" + b"}" * 5_000, "nested 5000 levels deep"),
    (b"[" + b"9" * 5000 + b"]", "a number of 5000 characters (at most 64)"),
    (b'{"x": 1.' + b"5" * 400 + b"}", "a number of 402 characters"),
    (b"[NaN]", "NaN (only finite numbers)"),
    (b"[1, -Infinity]", "-Infinity (only finite numbers)"),
    (b"[1e999]", "the number 1e999 is out of the float range"),
    (b'{"a": 1, "b": 2, "a": 3}', "the key 'a' twice in one object"),
    (b'{"k": {"x": 1, "x": 1}}', "the key 'x' twice"),
    (b'["\\ud800"]', "a lone surrogate"),
    (b'{"\\udfff": 1}', "a lone surrogate"),
    (b"\xff\xfe[]", "not UTF-8"),
    (b"{not json", "not valid JSON text"),
])
def test_json_breaking_a_limit_is_refused(data, rule):
    with pytest.raises(Refused) as e:
        parse(data)
    assert str(e.value).startswith("f.npz: member m: ") and rule in str(e.value)


def test_json_document_size_is_bounded_before_parsing():
    with pytest.raises(Refused, match="1.0 KiB of JSON, more than the 1000 bytes allowed"):
        parse(b" " * 1024 + b"{}", max_bytes=1000)


# ---- .npy headers ---------------------------------------------------------------------------
def npy(array=None, header=None, version=(1, 0)):
    """.npy bytes of ``array``, or of a hand-written header dict text (padded, as NumPy)."""
    if header is None:
        f = io.BytesIO()
        np.lib.format.write_array(f, array, version=version)
        return bytearray(f.getvalue())
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return bytearray(F.NPY_MAGIC + bytes([1, 0]) + len(text).to_bytes(2, "little") + text)


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.zeros((0, 5)), np.array(7, np.int64),
    np.arange(3, dtype=np.int32), np.array([1.5, -2.0])])
@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_arrays_numpy_writes_parse(array, version):
    got = F.npy_array(npy(array, version=version), "w", Refused)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


GOOD = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"


@pytest.mark.parametrize("header, rule", [
    (GOOD.replace("<f4", "<c8"), "dtype '<c8' refused"),
    (GOOD.replace("<f4", "|b1"), "dtype '|b1' refused"),
    (GOOD.replace("<f4", "<M8[s]"), "dtype '<M8[s]' refused"),
    (GOOD.replace("<f4", ">f4"), "dtype '>f4' refused"),
    (GOOD.replace("<f4", "<f2"), "dtype '<f2' refused"),
    (GOOD.replace("<f4", "|u1"), "dtype '|u1' refused"),  # only where the metadata is
    (GOOD.replace("<f4", "|O"), "an object dtype (pickled Python objects)"),
    (GOOD.replace("'<f4'", "[('a', '<f4')]"), "a structured dtype refused"),
    (GOOD.replace("False", "True"), "fortran_order must be False"),
    (GOOD.replace("(2, 3)", "(2, -3)"), "damaged .npy header: unexpected '-3)"),
    (GOOD.replace("(2, 3)", "(2.0, 3)"), "damaged .npy header"),
    (GOOD.replace("(2, 3)", "(2)"), "damaged .npy header"),
    (GOOD.replace("(2, 3)", "(" + "1, " * 40 + ")"), "at most 32 ints"),
    (GOOD.replace("(2, 3)", "(99999999999999999999999, 3)"), "damaged .npy header"),
    (GOOD.replace("'shape'", "'shap'"), "expected exactly descr, fortran_order, shape"),
    (GOOD.replace(", }", ", 'extra': 1, }"), "expected exactly descr"),
    (GOOD.replace(", }", ", 'shape': (1,), }"), "the key 'shape' twice"),
    (GOOD.replace("'<f4'", "__import__('os').system('true')"), "damaged .npy header"),
    (GOOD + " trailing", "damaged .npy header"),
    (GOOD.replace("{", "{{"), "damaged .npy header"),
    (GOOD[:-3], "damaged .npy header"),
])
def test_damaged_npy_headers_are_refused(header, rule):
    with pytest.raises(Refused) as e:
        F.npy_array(npy(header=header) + bytes(24), "c.npz: member 'w.npy'", Refused)
    assert str(e.value).startswith("c.npz: member 'w.npy': ") and rule in str(e.value)


@pytest.mark.parametrize("damage, rule", [
    (lambda b: b[:5], "no \\x93NUMPY magic"),
    (lambda b: b"\x93NUMPX" + b[6:], "not a .npy array"),
    (lambda b: b[:6] + bytes([9, 0]) + b[8:], "unsupported .npy version 9.0"),
    (lambda b: b[:8] + (60000).to_bytes(2, "little") + b[10:], "header of 60000 bytes "
                                                               "(at most 4096)"),
    (lambda b: b[:8] + (4000).to_bytes(2, "little") + b[10:], "runs past the member"),
    (lambda b: b[:20] + b"\xff" + b[21:], "not ASCII"),
])
def test_damaged_npy_prefixes_are_refused(damage, rule):
    good = bytes(npy(np.zeros(3, np.float32)))
    with pytest.raises(Refused) as e:
        F.npy_array(bytearray(damage(good)), "w", Refused)
    assert rule in str(e.value)


def test_a_shape_whose_product_is_huge_is_compared_not_allocated():
    header = GOOD.replace("(2, 3)", f"({2 ** 40}, {2 ** 40}, {2 ** 40})")
    with pytest.raises(Refused, match=r"EiB, but the member holds 24 bytes of data"):
        F.npy_array(npy(header=header) + bytes(24), "w", Refused)


# ---- values and sizes -------------------------------------------------------------------
def test_values_are_checked_after_conversion_to_the_dtype_they_are_used_in():
    big = np.array([1.0, 1e39])
    assert F.checked_values(big, "w", Refused) is big  # finite as float64
    with pytest.raises(Refused, match=r"w holds NaN or inf \(as float32\)"):
        F.checked_values(big, "w", Refused, np.float32)
    with pytest.raises(Refused, match="dtype int32 where float32 values are used"):
        F.checked_values(np.ones(2, np.int32), "w", Refused, np.float32)
    with pytest.raises(Refused, match="holds NaN or inf"):
        F.checked_values(np.array([np.nan], np.float32), "w", Refused)
    got = F.checked_values(np.array([0.5, -2.0]), "w", Refused, np.float32)
    assert got.dtype == np.float32 and got.tolist() == [0.5, -2.0]


def test_dimension_products_are_exact_and_bounded():
    dims = (65537, 65536, 4294901761)  # wraps to 65536 in 64 bits
    with pytest.raises(Refused, match=r"65537x65536x4294901761 = .* more than the 2.0 GiB"):
        F.checked_product(dims, 1, F.DATA_MAX_BYTES, "x-idx3-ubyte", Refused)
    assert F.checked_product((10, 28, 28), 1, F.DATA_MAX_BYTES, "x", Refused) == 7840


def test_a_size_past_every_unit_is_named_by_its_power_of_two():
    # Found by tests/test_fuzz.py: an IDX header of 111 dimensions of 2^32-1 claims about
    # 2^3552 bytes, and formatting that as a float (for the refusal) raised OverflowError.
    assert F.size_text(5 << 40) == "5.0 TiB" and F.size_text(1024 ** 7) == "1024.0 EiB"
    assert F.size_text(2 ** 8160) == "at least 2^8160 bytes"
    with pytest.raises(Refused, match=r"= at least 2\^3551 bytes of data, more than the 2.0 GiB"):
        F.checked_product((2 ** 32 - 1,) * 111, 1, F.DATA_MAX_BYTES, "x", Refused)


# ---- the metadata schema ----------------------------------------------------------------
def test_model_options_are_in_step_with_the_model_builders():
    """What a checkpoint may ask to build is what gpucnn.models builds: a new model or
    option needs its rule in filerules.MODEL_OPTIONS."""
    assert set(F.MODEL_OPTIONS) == set(MODELS)
    for name, build in MODELS.items():
        # (input_shape is the config's own field, not one of its kwargs)
        options = set(inspect.signature(build).parameters) - {"backend", "seed", "input_shape"}
        assert set(F.MODEL_OPTIONS[name]) == options, name


@pytest.mark.parametrize("model, rule", [
    ({"name": "lenet5", "kwargs": {"num_classes": 10 ** 9}}, "'model.kwargs.num_classes' is "
                                                            "1000000000: it must be an int "
                                                            "in [1, 100000]"),
    ({"name": "lenet5", "kwargs": {"num_classes": True}}, "'model.kwargs.num_classes' is True"),
    ({"name": "lenet5", "kwargs": {"dropout": 0.5}}, "'model.kwargs.dropout'"),
    ({"name": "alexnet", "kwargs": {"dropout": 1.0}}, "a finite number >= 0 and < 1"),
    ({"name": "alexnet", "kwargs": {"towers": "yes"}}, "true or false"),
    ({"name": "resnet", "kwargs": {}}, "'model.name' is 'resnet': it must be one of 'lenet5'"),
    ({"kwargs": {}}, "'model.name' is 'missing'"),
    ({"name": "lenet5", "input_shape": [1, 28]}, "a list of 3 ints"),
    ("lenet5", "'model' is 'lenet5'"),
])
def test_model_configs_this_version_cannot_build_are_refused(model, rule):
    with pytest.raises(Refused) as e:
        F.check_metadata({"model": model}, "c.npz", Refused, fields=("model",))
    assert str(e.value).startswith("c.npz: metadata field") and rule in str(e.value)


def _meta(**changes):
    meta = {"schema_version": 3, "written_by": "gpucnn 0.2.0",
            "model": {"name": "lenet5", "kwargs": {"num_classes": 10},
                      "input_shape": [1, 28, 28]},
            "model_extra": {"3": {"calls": 2}}, "optimizer": {"type": "SGD", "lr": 0.05,
                                                             "steps": 4},
            "epoch": 1, "batch_in_epoch": 0, "epoch_sums": [0.0, 0, 0, 0.0],
            "history": [{"epoch": 1, "lr": 0.05, "train_loss": 2.3, "train_accuracy": 0.1,
                         "seconds": 1.0, "images_per_s": None, "test_accuracy": 0.1}],
            "config": {"seed": 0, "lr": 0.05, "a_later_key": "scalar"},
            "config_changes": [],
            "conv_algos": {"setting": "auto", "kind": "cpu", "chosen": {"k": "wide"}}}
    meta.update(changes)
    return meta


@pytest.mark.parametrize("field, value, rule", [
    ("epoch", -1, "'epoch' is -1: it must be an int in [0, 9007199254740992]"),
    ("epoch", 2 ** 60, "'epoch' is 1152921504606846976"),
    ("epoch", 1.0, "'epoch' is 1.0"),
    ("batch_in_epoch", True, "'batch_in_epoch' is True"),
    ("optimizer", {"type": "SGD", "lr": 0.1, "steps": -4}, "'optimizer.steps' is -4"),
    ("optimizer", {"type": "Lion", "lr": 0.1, "steps": 4}, "'optimizer.type' is 'Lion'"),
    ("optimizer", {"type": "SGD", "lr": 0.1, "steps": 4, "x": 1}, "'optimizer.x'"),
    ("model_extra", {"3": {"calls": 2 ** 70}}, "'model_extra'"),
    ("config", {"seed": "0"}, "'config.seed' is '0'"),
    ("config", {"future": [1, 2]}, "'config.future' is [1, 2]"),
    ("conv_algos", {"chosen": {"k": 5}}, "'conv_algos.chosen.k' is 5"),
    ("surprise", 1, "'surprise' is 1: it must be absent: not a key of this object"),
])
def test_metadata_fields_breaking_the_schema_are_refused(field, value, rule):
    F.check_metadata(_meta(), "c.npz", Refused)  # the unchanged one passes
    with pytest.raises(Refused) as e:
        F.check_metadata(_meta(**{field: value}), "c.npz", Refused)
    assert rule in str(e.value) and "nothing was loaded" in str(e.value)
    assert math.isfinite(len(str(e.value))) and len(str(e.value)) < 400  # one short line


def test_an_emulator_record_nested_deep_is_damaged_not_a_traceback(tmp_path):
    """The emulator's module records are our files on disk: JSON nested past the limit (a
    RecursionError in json) is a damaged entry, rebuilt (the conv-algorithm cache's case is
    in tests/ops/test_conv_implicit.py)."""
    from gpucnn.backends.emu.cache import module_record
    path = tmp_path / "m.json"
    path.write_bytes(b'{"poison": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    with pytest.warns(RuntimeWarning, match="nested 200001 levels deep"):
        assert module_record(path) is None
