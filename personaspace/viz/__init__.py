"""Figures: the only code that writes HTML. Plotly figures with plotly.js embedded (plots), the sweep
heatmap and the token projection view (steering)."""
