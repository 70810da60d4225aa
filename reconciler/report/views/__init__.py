"""Stage: report — views. Observed state and evaluations turned into what people and machines
read: compliance rows (``compliance``), rich tables and the JSON/YAML contract (``render``), SSM's
CSV columns (``csvreport``), the offline HTML dashboard (``dashboard``), ASFF findings
(``findings``) and whole report files (``export``).

Pure: records and results in, rows, text or bytes out. Touches no file, network or clock (the
time is passed in; ``render`` writes only to the stream it is given) and does not import
``publish`` or ``notify``: writing and sending what it builds is their business.
"""
