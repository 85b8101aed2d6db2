"""The HTML report of a CV run or an inference folder, and its figures."""
