"""Publishing a trained student to the Hugging Face Hub: access checked before training, upload after.

:func:`check_push_access` runs before any data is generated or any model built, so a run with
``--push_to_hub`` never trains for hours and then fails on an unreachable Hub, a missing or
read-only token, or a repository the token cannot create.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from ..configuration_snd import SnDConfig
from ..model_card import build_model_card

# Only the final native student: not the checkpoints, logs or teacher around it.
UPLOADED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def _status(error: HfHubHTTPError) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def check_push_access(repo_id: str, *, private: bool = False) -> str:
    """Check that ``repo_id`` can be written: the Hub answers, the token is valid and can write, the
    repository exists or was just created. Returns the repository's URL.

    Raises:
        PermissionError: no token, an invalid or read-only token, or no right to create/write ``repo_id``.
        ConnectionError: the Hub cannot be reached (or offline mode is on).
    """
    api = HfApi()
    token = get_token()
    if token is None:
        raise PermissionError(
            f"--push_to_hub needs a Hugging Face token with write access to {repo_id!r}: run `hf auth login` "
            "or set HF_TOKEN (nothing was trained)."
        )
    try:
        identity = api.whoami(token=token)
        role = identity.get("auth", {}).get("accessToken", {}).get("role")
        if role == "read":
            raise PermissionError(
                f"the Hugging Face token of {identity.get('name')!r} is read-only; --push_to_hub needs a write token "
                "(nothing was trained)."
            )
        url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    except OfflineModeIsEnabled:
        raise ConnectionError("--push_to_hub needs the Hub, but HF_HUB_OFFLINE is set (nothing was trained).") from None
    except HfHubHTTPError as error:
        if _status(error) == 401:
            raise PermissionError(
                "the Hugging Face token was rejected (invalid or expired): run `hf auth login` or set HF_TOKEN "
                "(nothing was trained)."
            ) from None
        if _status(error) == 403:
            raise PermissionError(
                f"the Hugging Face token may not create or write {repo_id!r} ({error}); choose a --hub_model_id in your "
                "namespace (nothing was trained)."
            ) from None
        raise ConnectionError(f"the Hub refused the access check for {repo_id!r}: {error} (nothing was trained).") from None
    except PermissionError:
        raise
    except Exception as error:  # transport errors of the HTTP client (connection refused, DNS, TLS, timeout)
        raise ConnectionError(
            f"the Hugging Face Hub at {api.endpoint} could not be reached ({type(error).__name__}: {error}); "
            "check the network or HF_ENDPOINT, or train without --push_to_hub (nothing was trained)."
        ) from None
    return str(url)


def push_final_model(output_dir: str | Path, repo_id: str, *, training_config: dict, step: int) -> None:
    """Upload the native student in ``output_dir`` with a model card, as one commit.

    Raises:
        ConnectionError: the upload failed; the message says the model is safe on disk.
    """
    output_dir = Path(output_dir)
    card = build_model_card(
        SnDConfig.from_pretrained(output_dir), training_config=training_config, steps=step, repo_id=repo_id
    )
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(output_dir / name)) for name in UPLOADED_FILES]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    try:
        HfApi().create_commit(repo_id=repo_id, operations=operations, commit_message=f"SnD training, step {step}")
    except Exception as error:
        raise ConnectionError(
            f"training finished and the model is saved in {output_dir}, but uploading it to {repo_id!r} failed "
            f"({type(error).__name__}: {error}); upload its {', '.join(UPLOADED_FILES)} later."
        ) from None
