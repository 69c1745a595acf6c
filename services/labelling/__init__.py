"""The labelling service: 2D class averages in from the bus, graded A–F by several labelers in a
browser, agreement measured, a clean training set out (see docs/labelling.md)."""
