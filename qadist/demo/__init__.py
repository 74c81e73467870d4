"""`qadist demo`: every stage, embedded and offline on a CPU, in the seed's scenario: teachers trained on
other shops' labels, a camera store's logged questions and few gold labels.

Entry function: `qadist.demo.run.run_demo(DemoConfig)`. `domain` generates the data, `report`
scores every model and writes the table and the plot.
"""
