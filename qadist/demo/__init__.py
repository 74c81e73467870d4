"""`qadist demo`: every stage, embedded and offline on a CPU, on a generated camera-store domain.

Entry function: `qadist.demo.run.run_demo(DemoConfig)`. `camera_domain` generates the data,
`report` scores every model and writes the table and the plot.
"""
