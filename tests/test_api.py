"""The library's face: `from mlxhv import …` gives the entry points, loaded on first use."""

import subprocess
import sys

import pytest


def test_top_level_names_are_the_library_objects():
    from mlxhv import EvalSettings, Example, Judge, Prediction, evaluate, load, load_examples
    from mlxhv.data import load_examples as data_load
    from mlxhv.eval import EvalSettings as ES, evaluate as ev
    from mlxhv.judge import Judge as J
    from mlxhv.models import load as models_load
    from mlxhv.schema import Example as Ex, Prediction as P

    assert (Judge, load, evaluate, EvalSettings, load_examples, Example, Prediction) == (
        J, models_load, ev, ES, data_load, Ex, P)
    import mlxhv

    assert set(mlxhv.__all__) <= set(dir(mlxhv))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mlxhv.nope  # noqa: B018


def test_import_mlxhv_loads_no_model_code():
    code = ("import sys, mlxhv; print(sorted(m for m in sys.modules if m.startswith(('mlxhv.', 'mlx_lm'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["mlxhv._blas", "mlxhv.paths"]
