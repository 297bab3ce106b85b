"""A user's own Strategy, named by `strategy._target_=custom_strategy.FrozenFedAvg`.

It takes fewer hooks than Flower's FedAvg (no metric aggregation functions), and it never
changes the global model, so a test can tell that this class, not FedAvg, ran.
"""

from __future__ import annotations

from flwr.server.strategy import FedAvg


class FrozenFedAvg(FedAvg):
    def __init__(
        self,
        *,
        fraction_fit,
        fraction_evaluate,
        min_fit_clients,
        min_evaluate_clients,
        min_available_clients,
        accept_failures=True,
        evaluate_fn=None,
        on_fit_config_fn=None,
        on_evaluate_config_fn=None,
        initial_parameters=None,
        frozen: bool = True,
    ):
        super().__init__(
            fraction_fit=fraction_fit,
            fraction_evaluate=fraction_evaluate,
            min_fit_clients=min_fit_clients,
            min_evaluate_clients=min_evaluate_clients,
            min_available_clients=min_available_clients,
            accept_failures=accept_failures,
            evaluate_fn=evaluate_fn,
            on_fit_config_fn=on_fit_config_fn,
            on_evaluate_config_fn=on_evaluate_config_fn,
            initial_parameters=initial_parameters,
        )
        self.frozen = frozen
        self.fit_rounds: list[int] = []

    def aggregate_fit(self, server_round, results, failures):
        self.fit_rounds.append(server_round)
        params, metrics = super().aggregate_fit(server_round, results, failures)
        return (None if self.frozen else params), metrics
