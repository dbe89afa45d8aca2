"""The HTTP api function: the frontend's contract."""
