"""Readers for the file formats of cryo-EM tools (STAR, CTFFIND, CryoSPARC .cs, MRC), one module each."""
