"""2D class averages of RELION Class2D and CryoSPARC 2D jobs, read into one model.

Used by the labelling service (the classes people grade) and the render service (class images
and the labelled montage), so both number, count and resolve classes the same way.
"""

from cryobus.shared.class_averages.cryosparc import particles_cs_for, read_class_averages
from cryobus.shared.class_averages.model import ClassAverage, ClassSet
from cryobus.shared.class_averages.relion import read_class2d

__all__ = ["ClassAverage", "ClassSet", "particles_cs_for", "read_class2d", "read_class_averages"]
