"""The learning loop: retrain from the event history, gate, promote, announce (``router retrain``),
and measure the next-best-action against its control group (``router nba-report``).

Heavy libraries (lightgbm, sklearn, matplotlib) are imported only inside the commands.
"""
