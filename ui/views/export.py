"""Export: the labeler's exports of a job, downloaded from the page or written to a file under the data folder.

COCO and Label Studio exports come with a file beside them (COCO results, the labeling config),
offered and written with the export; image paths can be made relative, and Label Studio's served by URL.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import streamlit as st

from labeler.service import FORMATS, SUFFIX, ExportError, companion
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
relative_to = st.text_input(
    "Image paths relative to",
    key="export.relative_to",
    disabled=fmt == "jsonl",
    help="coco, llava, label-studio: a directory on this server; image paths are written relative to it (empty: as stored)",
).strip()
url_prefix = st.text_input(
    "Image URL prefix",
    key="export.url_prefix",
    disabled=fmt != "label-studio",
    help="label-studio: /data/local-files/?d= (Label Studio's local files, document root = the directory above) or an https:// or s3:// base",
).strip()
file_name = f"job-{job_id}{SUFFIX[fmt]}"
paths = (relative_to if fmt != "jsonl" and relative_to else None, url_prefix if fmt == "label-studio" and url_prefix else None)
chosen = (job_id, fmt, include_unreviewed, paths)


def export_to(target: Path) -> int | None:
    try:
        return labeler.export(job_id, fmt, target, include_unreviewed=include_unreviewed, relative_to=paths[0], image_url_prefix=paths[1])
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
                beside = companion(fmt, target)
                extra = (beside.name, beside.read_bytes()) if beside else None
                st.session_state["export.ready"] = (chosen, target.read_bytes(), count, extra)
    ready = st.session_state.get("export.ready")
    if ready and ready[0] == chosen:  # a file prepared for other choices is not offered
        _, data, count, extra = ready
        if len(data) > INLINE_LIMIT:
            st.warning(f"{file_name} is over {INLINE_LIMIT // 2**20} MB: write it to a path instead.")
        else:  # inside the page, as the images are: Streamlit's /media/ URLs need no login
            for name, content, what in ((file_name, data, f"{count:,} records"), *([(*extra, "beside it")] if extra else [])):
                link = f"data:application/octet-stream;base64,{base64.b64encode(content).decode()}"
                st.markdown(f'<a download="{name}" href="{link}">Download {name} ({what})</a>', unsafe_allow_html=True)
with write:
    data_dir = Path(labeler.settings.data_dir).resolve()
    st.subheader("Write to a path")
    wanted = st.text_input(f"File, relative to {data_dir}", value=f"exports/{file_name}", key="export.path")
    if st.button("Write file", key="export.write"):
        target = (data_dir / wanted).resolve()  # `..` and symlinks resolved before the check
        if not target.is_relative_to(data_dir):
            st.error(f"refused: {wanted} leads outside the data folder {data_dir}")
        elif (count := export_to(target)) is not None:
            beside = companion(fmt, target)
            st.success(f"{count:,} records written to {target}" + (f" and {beside.name} beside it" if beside else ""))
