"""The public API is typed: every public function and method of the library's modules annotates
its parameters and return value."""

import importlib
import inspect

import pytest

import tinyinduct

MODULES = ["config", "model", "data", "metrics", "evaluate", "loop", "stack", "summary",
           "snapshots", "replay", "record", "hooks", "interventions", "rundir", "tracking", "runs",
           "interop", "resources", "memory"]


def public_functions(module):
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if isinstance(value, property):
                    yield f"{name}.{attr}", value.fget
                elif inspect.isfunction(value) and (not attr.startswith("_")
                                                    or attr in ("__init__", "forward")):
                    yield f"{name}.{attr}", value


@pytest.mark.parametrize("module_name", MODULES)
def test_public_functions_are_annotated(module_name):
    module = importlib.import_module(f"tinyinduct.{module_name}")
    untyped = []
    for name, func in public_functions(module):
        sig = inspect.signature(func)
        params = [p for p, v in sig.parameters.items()
                  if p not in ("self", "cls") and v.annotation is inspect.Parameter.empty
                  and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
        no_return = (sig.return_annotation is inspect.Signature.empty
                     and not name.endswith("__init__"))
        if params or no_return:
            untyped.append(f"{name}: {params}{' and return' if no_return else ''}")
    assert not untyped, f"tinyinduct.{module_name}: untyped {untyped}"


def test_the_public_face_exports_what_the_readme_uses():
    for name in ("AttnOnlyTransformer", "ModelConfig", "RunConfig", "load_run", "train",
                 "to_transformer_lens", "from_transformer_lens"):
        assert name in tinyinduct.__all__ and hasattr(tinyinduct, name), name
