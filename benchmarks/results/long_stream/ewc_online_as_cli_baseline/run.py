import json
import sys
import time
from dataclasses import replace

import numpy as np

from metaspike.app.reproduce.long_stream import METHODS, run_method, stream_config
from metaspike.continual.metrics import evaluated_accuracy, last_tasks_accuracy

seed = int(sys.argv[1])
method = next(m for m in METHODS if m.label == "EWC-Online")
config = replace(stream_config("cpu", seed), **method.settings)
start = time.perf_counter()
result, step = run_method(config)
m = np.array(result.matrix, dtype=float)
print(json.dumps({"seed": seed, "evaluated": evaluated_accuracy(m)[0], "last5": last_tasks_accuracy(m, 5),
                  "task1": float(m[-1, 0]), "seconds": time.perf_counter() - start}), flush=True)
