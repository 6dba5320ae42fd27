"""Names from the hub before they become paths, and a repo's files read as models."""

import os

import pytest

from tandem.app.hub.names import (
    RemoteFile, UnsafeName, check_file_name, check_repo_id, find_model, group_models, quant_of, safe_path,
    split_info, unique_id,
)
from tandem.app.errors import InvalidRequest
from tandem.runtime.embedded import MODEL_ID


@pytest.mark.parametrize("repo", ["bartowski/Llama-3.2-1B-Instruct-GGUF", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "a/b.c_d-e"])
def test_repo_ids_of_the_hub_are_accepted(repo):
    assert check_repo_id(repo) == tuple(repo.split("/"))


@pytest.mark.parametrize("repo", ["..", "../etc", "a/..", "a/b/c", "/abs/x", "a\\b/c", "a/b..c", ".hidden/x", "a/", "", "a b/c"])
def test_repo_ids_that_could_leave_the_folder_are_refused(repo):
    with pytest.raises(UnsafeName, match="owner/name"):
        check_repo_id(repo)


@pytest.mark.parametrize("name", ["model.Q4_K_M.gguf", "Q8_0/model-Q8_0-00001-of-00002.gguf", "x (1).gguf"])
def test_file_names_with_subfolders_are_accepted(name):
    assert str(check_file_name(name)) == name


@pytest.mark.parametrize("name", ["../../evil.gguf", "a/../../x.gguf", "/etc/passwd", "a\\..\\b.gguf", "",
                                  "./x.gguf", "a//b.gguf", "x\x00.gguf", ".bashrc", "a/b/c/d/e/f.gguf"])
def test_file_names_that_could_escape_are_refused(name):
    with pytest.raises(UnsafeName, match="refused"):
        check_file_name(name)


def test_safe_path_refuses_a_symlink_out_of_the_models_folder(tmp_path):
    root = tmp_path / "models"
    (root / "owner").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "owner" / "repo")
    with pytest.raises(UnsafeName, match="outside the models folder"):
        safe_path(root, "owner", "repo", "model.gguf")
    assert safe_path(root, "owner", "other", "model.gguf") == root.resolve() / "owner" / "other" / "model.gguf"


@pytest.mark.parametrize("name,quant", [
    ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"), ("qwen2.5-0.5b-instruct-q8_0.gguf", "Q8_0"),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"), ("gemma-3-4b-it-IQ4_XS.gguf", "IQ4_XS"),
    ("model-bf16.gguf", "BF16"), ("Mistral-7B-Instruct-v0.3.fp16.gguf", "F16"),
    ("Q8_0/Big-Q8_0-00001-of-00003.gguf", "Q8_0"), ("model.gguf", None),
])
def test_quant_is_read_from_the_file_name(name, quant):
    assert quant_of(name) == quant


def test_split_files_are_one_model_with_their_total_size():
    files = [RemoteFile("README.md", 10, None), RemoteFile("m-Q4_K_M.gguf", 100, "a" * 64),
             RemoteFile("Q8_0/m-Q8_0-00002-of-00002.gguf", 60, "c" * 64),
             RemoteFile("Q8_0/m-Q8_0-00001-of-00002.gguf", 90, "b" * 64),
             RemoteFile("mmproj-m-f16.gguf", 50, "d" * 64)]
    models = group_models(files)
    assert [m.key for m in models] == ["m-Q4_K_M.gguf", "Q8_0/m-Q8_0-00001-of-00002.gguf"]
    split = models[1]
    assert split.quant == "Q8_0" and split.size == 150 and split.complete
    assert [f.name for f in split.files] == ["Q8_0/m-Q8_0-00001-of-00002.gguf", "Q8_0/m-Q8_0-00002-of-00002.gguf"]
    assert split_info(split.files[1].name) == ("m-Q8_0", 2, 2)


def test_a_split_model_missing_a_part_is_marked_incomplete():
    models = group_models([RemoteFile("m-00001-of-00003.gguf", 1, None), RemoteFile("m-00003-of-00003.gguf", 1, None)])
    assert len(models) == 1 and not models[0].complete


def test_a_model_is_found_by_quant_or_file_name_and_a_wrong_one_says_what_there_is():
    models = group_models([RemoteFile("m-Q4_K_M.gguf", 1, None), RemoteFile("m-Q8_0.gguf", 2, None)])
    assert find_model(models, "q8_0").key == "m-Q8_0.gguf"
    assert find_model(models, "m-Q4_K_M.gguf").key == "m-Q4_K_M.gguf"
    with pytest.raises(InvalidRequest, match="It has: Q4_K_M, Q8_0"):
        find_model(models, "Q2_K")
    with pytest.raises(InvalidRequest, match="Name the file or quant"):
        find_model(models, None)


def test_ids_never_take_the_built_in_models_id_or_another_models():
    taken = {"m-q4": "/models/a/m-q4.gguf"}
    assert unique_id([MODEL_ID, "owner-" + MODEL_ID], "/x/y.gguf", {}) == "owner-" + MODEL_ID
    assert unique_id(["m-q4"], "/models/b/m-q4.gguf", taken) == "m-q4-2"
    assert unique_id(["m-q4"], "/models/a/m-q4.gguf", taken) == "m-q4"  # the same file keeps its id
