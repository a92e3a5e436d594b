"""Browse: search and filter items with their predictions and reviews, as thumbnails and as a table."""

from __future__ import annotations

import math
from dataclasses import replace

import streamlit as st

from labeler.service import BrowseQuery, BrowseRow, ItemState, label_text, probability
from ui import context, filters, images

PAGE_SIZE = 24
COLUMNS = 4
ITEM_STATES = ["any", *ItemState]

labeler = context.labeler()
st.title("Browse")
with st.sidebar:
    st.subheader("Filters")
    search = st.text_input("Search paths, questions and answers", key="browse.search")
    item_status = st.selectbox("Item status", ITEM_STATES, key="browse.status")
    wanted = filters.prediction_filter(labeler, "browse")

base = BrowseQuery(predictions=wanted, item_status=None if item_status == "any" else item_status, search=search.strip() or None)
page = st.number_input("Page", min_value=1, value=1, key="browse.page")
found = labeler.browse(replace(base, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE))
rows = found.rows
st.caption(f"{found.total:,} matching items · page {page} of {max(1, math.ceil(found.total / PAGE_SIZE))}")


def answer(row: BrowseRow) -> str:
    """The corrected answer after an edit, else the model's."""
    return label_text(row.reviewed_output) if row.decision == "edit" else row.text or ""


grid, table = st.tabs(["Thumbnails", "Table"])
with grid:
    for start in range(0, len(rows), COLUMNS):
        for column, row in zip(st.columns(COLUMNS), rows[start : start + COLUMNS], strict=False):
            with column:
                verdict = row.decision or ("unreviewed" if row.prediction_id else row.item_status)
                st.caption(f"job #{row.job_id} · item {row.item_id} · {verdict}")
                if row.error:
                    st.error(f"{row.uri}: {row.error}")
                    continue
                images.show(row.uri, size=images.THUMBNAIL_SIZE)
                st.write(answer(row)[:200])
with table:
    st.dataframe(
        [
            {
                "job": row.job_id,
                "item": row.item_id,
                "image": row.uri,
                "status": row.item_status,
                "model": row.model_version,
                "confidence": probability(row.confidence),
                "answer": answer(row),
                "review": row.decision,
                "reviewer": row.reviewer,
                "error": row.error,
            }
            for row in rows
        ],
        hide_index=True,
        width="stretch",
        column_config={"confidence": st.column_config.NumberColumn(format="percent", help="Geometric-mean token probability.")},
    )
