"""Figures: the only code that writes HTML. Plotly figures with plotly.js embedded (plots), the sweep
heatmap and the token projection view (steering), and the emergent-misalignment experiment's figures (em).
Methods return data; these functions draw it."""
