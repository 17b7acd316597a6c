"""Evaluation on public benchmarks: local benchmark copies (`benchmarks`), official score aggregation (`protocols`)."""
