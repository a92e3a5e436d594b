"""Export: the labeler's exports of a job, downloaded from the page or written to a file under the data folder."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import streamlit as st

from labeler.service import FORMATS, SUFFIX, ExportError
from ui import context

INLINE_LIMIT = 16 * 2**20  # larger exports are written to a path, not carried in the page

labeler = context.labeler()
st.title("Export")
jobs = {job.id: f"#{job.id} {job.name or job.source} ({job.task}, {job.status})" for job in labeler.list_jobs(limit=500)}
if not jobs:
    st.info("No jobs to export yet.")
    st.stop()
job_id = st.selectbox("Job", list(jobs), format_func=jobs.get, key="export.job")
fmt = st.selectbox(
    "Format", FORMATS, key="export.format", help="jsonl: everything; coco: captions; llava: training records; label-studio: tasks"
)
include_unreviewed = st.checkbox(
    "Include unreviewed predictions", key="export.unreviewed", disabled=fmt != "llava", help="llava only: reviewed labels alone by default"
)
file_name = f"job-{job_id}{SUFFIX[fmt]}"
chosen = (job_id, fmt, include_unreviewed)


def export_to(target: Path) -> int | None:
    try:
        return labeler.export(job_id, fmt, target, include_unreviewed=include_unreviewed)
    except ExportError as exc:
        st.error(str(exc))
        return None


download, write = st.columns(2)
with download:
    st.subheader("Download")
    if st.button("Prepare download", key="export.prepare"):
        with tempfile.TemporaryDirectory(prefix="llava-labeler-export-") as folder:
            target = Path(folder) / file_name
            count = export_to(target)
            if count is not None:
                st.session_state["export.ready"] = (chosen, target.read_bytes(), count)
    ready = st.session_state.get("export.ready")
    if ready and ready[0] == chosen:  # a file prepared for other choices is not offered
        _, data, count = ready
        if len(data) > INLINE_LIMIT:
            st.warning(f"{file_name} is over {INLINE_LIMIT // 2**20} MB: write it to a path instead.")
        else:  # inside the page, as the images are: Streamlit's /media/ URLs need no login
            link = f"data:application/octet-stream;base64,{base64.b64encode(data).decode()}"
            st.markdown(f'<a download="{file_name}" href="{link}">Download {file_name} ({count:,} records)</a>', unsafe_allow_html=True)
with write:
    data_dir = Path(labeler.settings.data_dir).resolve()
    st.subheader("Write to a path")
    wanted = st.text_input(f"File, relative to {data_dir}", value=f"exports/{file_name}", key="export.path")
    if st.button("Write file", key="export.write"):
        target = (data_dir / wanted).resolve()  # `..` and symlinks resolved before the check
        if not target.is_relative_to(data_dir):
            st.error(f"refused: {wanted} leads outside the data folder {data_dir}")
        elif (count := export_to(target)) is not None:
            st.success(f"{count:,} records written to {target}")
