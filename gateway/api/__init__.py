"""Thin gRPC servicers and request validation: parse → decide → record → respond."""
