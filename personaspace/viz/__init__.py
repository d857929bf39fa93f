"""Figures: the only code that writes HTML. Every page goes through html (offline: plotly.js written once
beside the pages or embedded once, nothing from the network); plotly figures of persona spaces (plots), the
sweep heatmap and the token projection view (steering), and the emergent-misalignment experiment's figures
(em). Methods return data; these functions draw it."""
