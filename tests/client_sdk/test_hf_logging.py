"""The Hugging Face callback writes energy into the Trainer's logs (every tracker sees it), with a real
``transformers.Trainer`` and TRL's ``SFTTrainer`` on CPU, the replay GPU and a real server.

Nothing is downloaded: the SFT model is built from a config and its tokenizer from a local vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from client_sdk.client import OptimizerClient  # noqa: E402
from client_sdk.hf import PowerBanditCallback  # noqa: E402
from client_sdk.replay import ReplayGpu  # noqa: E402
from optimizer_server.server import EmbeddedServer  # noqa: E402
from tests.helpers import SMALL_TABLE, small_job  # noqa: E402

KEYS = {
    "powerbandit/energy_j", "powerbandit/time_s", "powerbandit/average_power_w", "powerbandit/power_limit_w",
    "powerbandit/batch_size", "powerbandit/epochs", "powerbandit/profiling",
}  # fmt: skip


@pytest.fixture
def client(tmp_path: Path) -> Iterator[OptimizerClient]:
    with EmbeddedServer(f"sqlite:///{tmp_path / 'pb.db'}") as server, OptimizerClient(server.address, timeout_s=10) as c:
        yield c


class Recorder(TrainerCallback):
    """Stands for a tracker (W&B, MLflow, TensorBoard): records what each on_log event carries."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.logs.append(dict(logs or {}))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": (self.linear(x) - labels).pow(2).mean()}


def test_trainer_logs_carry_energy_for_trackers_listed_before_the_callback(
    client: OptimizerClient, tmp_path: Path
) -> None:
    rows = [{"x": [float(i % 7)], "labels": [2.0 * (i % 7)]} for i in range(64 * 6)]
    gpu = ReplayGpu(SMALL_TABLE)
    callback = PowerBanditCallback(client, small_job(target_metric=-1.0, higher_is_better=False), gpu,
                                   metric_key="eval_loss", heartbeat=False)  # fmt: skip
    recorder = Recorder()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=callback.local_batch_size, num_train_epochs=2,
        eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True, logging_steps=2,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=Tiny(), args=args, train_dataset=rows, eval_dataset=rows[:64],
                      callbacks=[recorder, callback])  # fmt: skip
    assert trainer.callback_handler.callbacks[0] is callback  # moved first: the trackers come after it
    with callback:
        trainer.train()
    done = callback.completed_run
    assert done is not None and done.epochs == 2
    step_logs = [entry for entry in recorder.logs if "loss" in entry]
    assert len(step_logs) == 6 and all(entry.keys() >= KEYS for entry in recorder.logs)
    energies = [entry["powerbandit/energy_j"] for entry in recorder.logs]
    assert energies == sorted(energies) and energies[-1] == pytest.approx(done.energy_j)
    assert step_logs[0]["powerbandit/profiling"] == 1.0  # the first epoch profiles the power limits
    assert step_logs[-1]["powerbandit/profiling"] == 0.0 and step_logs[-1]["powerbandit/batch_size"] == 64
    assert recorder.logs[-1]["powerbandit/power_limit_w"] == done.power_limit_w
    assert all(entry.keys() >= KEYS for entry in trainer.state.log_history)


def test_sft_trainer_of_trl_with_a_local_model_and_tokenizer(client: OptimizerClient, tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<eos>", *["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park"]]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                       pad_token_id=0, eos_token_id=2, bos_token_id=2))  # fmt: skip
    sentences = ["the cat sat on a mat", "the dog ran to a park", "a cat and a dog sat on the mat"]
    data = datasets.Dataset.from_dict({"text": [sentences[i % 3] for i in range(32 * 4)]})
    callback = PowerBanditCallback(client, small_job("team/sft", target_metric=-1.0, higher_is_better=False),
                                   ReplayGpu(SMALL_TABLE), metric_key="eval_loss", heartbeat=False)  # fmt: skip
    recorder = Recorder()
    config = trl.SFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=callback.local_batch_size, num_train_epochs=2,
        eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True, logging_steps=1,
        max_length=16, disable_tqdm=True, dataset_num_proc=None,
    )  # fmt: skip
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=data, eval_dataset=data.select(range(16)),
                             processing_class=tokenizer, callbacks=[recorder, callback])  # fmt: skip
    with callback:
        trainer.train()
    done = callback.completed_run
    assert done is not None and done.epochs == 2 and done.batch_size == 64
    logged = [entry for entry in recorder.logs if "loss" in entry]
    assert logged and all(entry.keys() >= KEYS for entry in logged)
    assert recorder.logs[-1]["powerbandit/energy_j"] == pytest.approx(done.energy_j)
