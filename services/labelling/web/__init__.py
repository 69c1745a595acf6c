"""The labelling web app (FastAPI + server-rendered HTML + a little vanilla JavaScript)."""
