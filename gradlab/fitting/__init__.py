"""The fit wing: ``fit`` = ``prepare_fit`` then ``run``; the result, the stop rules, the loop."""
