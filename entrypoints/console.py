"""The review console's Streamlit script: `llava-labeler ui` runs `streamlit run` on this file.

Streamlit runs it anew on every interaction; it assembles the settings (read once per
process) and hands them to the console.
"""

from entrypoints.settings import get_settings
from ui.app import main

main(get_settings())
