"""LR control as a problem: what a controller sees and does (``interface``), scripted rules, reward
penalties, instances and the Gymnasium env. Knows no agent."""
