"""The dataset half of a session: download and verify the outputs, publish them as a new version of the
checkpoint dataset, and wait until that version is ready for the next session to mount."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kaggle_runner.backends.base import DatasetInfo
from kaggle_runner.chain_kernel import KernelSteps, pushed_version
from kaggle_runner.chain_machine import ChainState, FailureKind
from kaggle_runner.chain_outputs import OutputsInvalid, verify_outputs
from kaggle_runner.chain_state import SessionRecord
from kr_contract.marker import write_marker
from kr_contract.names import OUTPUT_PATTERN, TARBALL, TRAINING_LOG


class DatasetSteps(KernelSteps):
    # -- download

    def _download(self) -> None:
        session, attempt = self.record.current, self.record.current.attempt
        version = pushed_version(attempt)
        incoming = self.session_dir() / ".incoming"
        problem = ""
        for _ in range(self.timing.download_attempts):
            started = self.clock.time()
            self._call(
                "downloading the outputs",
                lambda: self.backend.download(self.spec.kernel_ref, version, incoming, pattern=OUTPUT_PATTERN),
            )
            verifying = self.clock.time()
            self._stage("download", verifying - started)
            try:
                verified = verify_outputs(incoming, chain_id=self.spec.chain_id, session=session.index)
            except OutputsInvalid as exc:
                problem = exc.message
                self.observer.outputs_rejected(version, problem)
                continue
            self._stage("verify", self.clock.time() - verifying)
            self._keep_outputs(session, incoming, verified)
            attempt.outcome = "complete"
            session.pre_publish_version = self._dataset_version()
            self._transition(ChainState.PUBLISHING, "outputs verified; publish intent recorded")
            return
        shutil.rmtree(incoming, ignore_errors=True)
        attempt.outcome = FailureKind.BAD_OUTPUTS.value
        self._failed(FailureKind.BAD_OUTPUTS, f"outputs do not verify: {problem}")

    # -- publish

    def _publish(self) -> None:
        session = self.record.current
        if not self._entered_here and self._publish_went_through(session):
            self._published(session)
            return
        folder = self._publish_folder(session)
        started = self.clock.time()
        self._call_until_done(
            "publishing the checkpoint",
            lambda: self.backend.publish_dataset(folder, self.spec.dataset_ref, title=self._dataset_title(),
                                                 notes=self._dataset_notes(session)),
            lambda: self._publish_went_through(session),
        )
        self._stage("publish", self.clock.time() - started)
        shutil.rmtree(folder, ignore_errors=True)
        self._published(session)

    def _publish_went_through(self, session: SessionRecord) -> bool:
        version = self._dataset_version()
        return version is not None and (
            session.pre_publish_version is None or version > session.pre_publish_version
        )

    def _published(self, session: SessionRecord) -> None:
        session.publish_started_at = self.clock.time()
        self._transition(ChainState.WAITING_DATASET, "published")

    def _publish_folder(self, session: SessionRecord) -> Path:
        """The dataset version's files: the tarball, the log and the marker the next kernel checks."""
        folder = self.session_dir() / ".publish"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in (TARBALL, TRAINING_LOG):
            _link_or_copy(self.session_dir() / name, folder / name)
        marker = write_marker(folder, chain=self.spec.chain_id, session=session.index, tarball=folder / TARBALL)
        if marker.sha256 != session.outputs[TARBALL]:
            raise OutputsInvalid(f"{TARBALL} of session {session.index} changed on disk since it was verified")
        return folder

    def _dataset_title(self) -> str:
        # Kaggle wants 6 to 50 characters; the slug already has that length.
        return self.spec.dataset_ref.split("/")[-1]

    def _dataset_notes(self, session: SessionRecord) -> str:
        return f"chain {self.spec.chain_id} session {session.index}: epoch {session.epoch} step {session.step}"

    # -- wait until the version is ready

    def _wait_dataset(self) -> None:
        session = self.record.current
        started = session.publish_started_at or self.clock.time()
        while True:
            info = self._call(
                "reading the checkpoint dataset", lambda: self.backend.dataset_info(self.spec.dataset_ref)
            )
            if info is not None and info.is_ready and self._version_went_up(info, session):
                self._stage("dataset ready", self.clock.time() - started)
                self._dataset_ready(session, info)
                return
            if info is not None and info.status == "failed":
                self._transition(ChainState.FAILED_DATASET, "dataset_failed",
                                 message=f"{self.spec.dataset_ref}: processing the new version failed")
                return
            if self.clock.time() - started > self.timing.dataset_ready_timeout_s:
                status = info.status if info else "not found"
                minutes = self.timing.dataset_ready_timeout_s / 60
                self._transition(ChainState.FAILED_DATASET, "dataset_timeout",
                                 message=f"{self.spec.dataset_ref} still {status} {minutes:.0f} min after publishing")
                return
            self._sleep(self.timing.dataset_poll_s)

    def _version_went_up(self, info: DatasetInfo, session: SessionRecord) -> bool:
        if info.version is None:
            return True  # a backend that cannot tell versions apart: the kernel's marker check guards it
        return session.pre_publish_version is None or info.version > session.pre_publish_version

    def _dataset_ready(self, session: SessionRecord, info: DatasetInfo) -> None:
        session.dataset_version = info.version
        session.finished_at = self.clock.time()
        if self._chain_done(session):
            message = f"final model in {self.session_dir(session.index)} and {self.spec.dataset_ref}"
            self._transition(ChainState.SUCCEEDED, "all sessions done", message=message)
        else:
            self._begin_session(session.index + 1)

    def _chain_done(self, session: SessionRecord) -> bool:
        if self.spec.until_epoch is not None and (session.epoch or 0) >= self.spec.until_epoch:
            return True
        return session.index >= self.spec.sessions


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
