"""What the runtime wires around the round machine for robustness, in one place.

- :class:`~fednode.node.inbox.InboundBudget`: a bound on the transport's backlog (flood protection);
- the validation-score filter (``validation_filter``): the trainer scores, the machine gets a callable;
- Byzantine fault injection (``attack``, set only by the testnet): :mod:`fednode.node.byzantine`.

Each hook is a no-op unless configured, so an honest default node pays one budget check per message.
"""

from __future__ import annotations

import logging
from typing import Any

from fednode.node.inbox import InboundBudget
from fednode.security.arrays import Model

log = logging.getLogger("fednode.node")


class RuntimeHooks:
    def __init__(self, config: Any, identity: Any, allow_list: Any, trainer: Any) -> None:
        self.config = config
        self.trainer = trainer
        self.inbound = InboundBudget()
        self.validation = None
        self.attacker = None
        if config.attack != "off":
            from fednode.node.byzantine import ByzantineInterceptor
            self.attacker = ByzantineInterceptor(config.attack, identity, allow_list, trainer.model_spec,
                                                 seed=config.seed)
            log.warning("BYZANTINE node: fault injection %r poisons every contribution of this node", config.attack)

    def install(self, machine: Any, model: Model) -> None:
        """Before the trainer's warmup: hold out the validation slice and hand the machine its scorer."""
        if self.config.validation_filter:
            from fednode.node.trainer.validation import ValidationFilter
            self.validation = ValidationFilter(self.trainer)
            self.validation.warmup(model)
            machine.contribution_filter = self.validation

    def received(self, data: bytes) -> None:
        """Main loop, a message taken from the queue."""
        self.inbound.release(len(data))
        if self.attacker is not None:
            self.attacker.observe(data)

    def step_started(self, rnd: int, model: Model) -> None:
        if self.attacker is not None:
            self.attacker.note_base(rnd, model)

    def step_done(self, rnd: int, model: Model) -> Model:
        if self.attacker is not None and self.config.secure_aggregation != "off":
            return self.attacker.poison_step(rnd, model)
        return model

    def outgoing(self, kind: str, data: bytes) -> bytes:
        if self.attacker is not None and kind == "contribute":
            return self.attacker.rewrite(data)
        return data

    def status(self, fields: dict) -> None:
        fields["inbound_dropped"] = self.inbound.dropped
        fields["inbound_peak"] = self.inbound.peak_messages
        if self.validation is not None:
            fields["validation"] = self.validation.summary()
        if self.attacker is not None:
            fields["attack"] = self.config.attack
            fields["contributions_poisoned"] = self.attacker.contributions_poisoned
