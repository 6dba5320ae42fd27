import pytest

from tandem.runtime.engine import LoadParams, SamplingParams
from tandem.runtime.hardware import physical_cores


def test_threads_default_to_physical_cores_not_the_library_default():
    p = LoadParams("/models/x.gguf")
    assert p.n_threads == physical_cores()
    assert p.n_threads_batch == physical_cores()
    assert str(p.path) == "/models/x.gguf"


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n_ctx": 8}, "n_ctx"), ({"n_threads": 0}, "n_threads"), ({"n_gpu_layers": -2}, "n_gpu_layers")],
)
def test_bad_load_params_are_refused_with_the_field_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        LoadParams("/m.gguf", **kwargs)


@pytest.mark.parametrize(
    "kwargs, word",
    [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens")],
)
def test_bad_sampling_params_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingParams(**kwargs)


def test_empty_stop_strings_are_dropped():
    assert SamplingParams(stop=("", "x")).stop == ("x",)
