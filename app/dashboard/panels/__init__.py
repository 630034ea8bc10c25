"""Dashboard panels, one module each (the circuit panel: panels/circuit.py)."""
