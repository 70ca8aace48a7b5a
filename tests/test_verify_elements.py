"""``gpucnn verify`` counts, per figure, the elements beyond the element tolerance of
gpucnn.testing.assert_close: one wrong element that the norm-wise error hides is reported."""
import numpy as np

from gpucnn.backends.device import DeviceBackend, make_emu_backend
from gpucnn.verify import verify_model


class _OneElementOff(DeviceBackend):
    """The emu backend with one element of Linear(400->120)'s output off by 1.5e-3 x its
    RMS, at the output nearest zero: 1.5 times the element bound, while the norm-wise error
    of 4 x 120 outputs is 1.5e-3 / sqrt(480) = 7e-5, under the 1e-4 tolerance."""

    def __init__(self):
        base = make_emu_backend(checks=True, seed=3)
        super().__init__(base.module, np, "emu", base.max_blocks, base.device_name)

    def plan(self, op, setup, *specs):
        """The backend's one way to run an op: the linear layer's plan comes out spoiled."""
        plan = super().plan(op, setup, *specs)
        if op.name == "linear":
            run = plan.run

            def spoiled(x, w, b):
                y = run(x, w, b)
                if w.shape[0] == 120:
                    y = y.copy()
                    i = int(np.argmin(np.abs(y)))
                    y.flat[i] += 1.5e-3 * float(np.sqrt(np.mean(np.square(y))))
                return y
            plan.run = spoiled
        return plan


def test_verify_counts_an_element_the_norm_hides():
    doc = verify_model("lenet5", backend=_OneElementOff(), batch=4, seed=2).to_dict()
    for layer in doc["layers"]:
        for run in layer["runs"]:
            counts = run["element_mismatches"]
            spoiled = layer["layer"].startswith("Linear(400->120)")
            assert counts["forward"] == (1 if spoiled else 0), (layer["layer"], run)
            assert not any(counts["param_grads"].values()) and not counts["input_grad"]
            if spoiled:
                assert run["forward_error"] <= layer["tolerance"]  # the norm passes it
        # ... and the element count fails exactly that layer, saying why in the table
        assert layer["passed"] == (not layer["layer"].startswith("Linear(400->120)")), layer


def test_the_table_says_why_an_element_fails_a_layer(capsys):
    from gpucnn.verify.report import format_table
    doc = verify_model("lenet5", backend=_OneElementOff(), batch=4, seed=2).to_dict()
    text = format_table(doc)
    spoiled = next(l for l in doc["layers"] if l["layer"].startswith("Linear(400->120)"))
    assert spoiled["element_mismatches"] >= 1
    assert "element(s) beyond the element-wise bound" in text and text.count(
        "element(s) beyond") == 1
