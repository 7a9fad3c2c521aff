"""The side-by-side demo page (``python demo/app.py``): stock and TGATE on the same seed, in Gradio."""
