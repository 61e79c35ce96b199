"""The paper's synthetic experiments (Sec. 6.1, App. E.2-E.3; Figs. 5 and 6): plan (:mod:`.plan`),
units (:mod:`.units`), the resumable job (:mod:`.job`), aggregation, claims, results and figures."""
