"""Every analysis result prints as one short line (model, heads, metrics), not its DataFrames."""
import importlib

from interp.results import AnalysisResult

MODULES = ["circuits.sinks", "circuits.heads", "circuits.active_dormant", "circuits.retrieval", "circuits.safety",
           "circuits.ioi", "saes.evaluate"]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_result_class_keeps_the_one_line_repr():
    for name in MODULES:
        importlib.import_module(name)
    found = sorted(c.__name__ for c in _subclasses(AnalysisResult))
    assert {"SinksResult", "HeadTypesResult", "DormantResult", "RetrievalResult", "SafetyResult"} <= set(found)
    wrong = [c.__name__ for c in _subclasses(AnalysisResult) if c.__repr__ is not AnalysisResult.__repr__]
    assert wrong == [], f"{wrong}: decorate with @dataclass(repr=False)"


def test_a_result_with_long_frames_prints_one_short_line():
    import numpy as np
    import pandas as pd

    from circuits.sinks import SinksResult
    from interp.head_table import HeadTable

    table = HeadTable.from_arrays({"alpha": np.zeros((2, 3))}, model="tiny")
    frame = pd.DataFrame({"x": range(50)})
    text = repr(SinksResult(table, None, frame, frame, frame))
    assert text == "SinksResult(model='tiny', heads=6, metrics=['alpha'])"
