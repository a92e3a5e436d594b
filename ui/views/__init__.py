"""The console's pages: scripts that Streamlit runs through st.navigation (ui/app.py), never imported."""
