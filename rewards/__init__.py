"""Built-in reward plugins; importing this package registers them (see `ling_rl.reward.registry`).

- `exact_answer`: 1.0 / 0.0 exact match of the final answer against the `answer` column.
- `answer_proximity`: shaped numeric closeness to `answer`.
- `numeric_response`: fraction of digits in the response, a format reward a random policy climbs.
- `syntax`, `function`, `aesthetics`, `sfa`: front-end code parses, renders and passes scripted
  checks in headless Chromium, looks good (vision judge or layout proxy), gated combination.
- `gar`, `rubric`: LLM-judge rewards (group arena, weighted rubric) over an OpenAI-compatible API.
- `math`: final-answer correctness by math-verify (LaTeX, fractions, intervals, units), with a
  parse-failure rate; `format`: Evo-CoT's thinking-tag penalty and required answer format;
  `length`: Evo-CoT's group-level dynamic length reward; `code`: Python tests in a sandbox.
- `environment_reward`: an agentic environment's own `get_reward()` (added by the driver).
"""

from rewards import answer_proximity, exact_answer, numeric_response
from rewards import aesthetics, function, gar, rubric, sfa, syntax
from rewards import code, format, length, math
from rewards import environment

__all__ = ["answer_proximity", "exact_answer", "numeric_response"]
__all__ += ["aesthetics", "function", "gar", "rubric", "sfa", "syntax"]
__all__ += ["code", "format", "length", "math"]
__all__ += ["environment"]
