"""`router dev`: local broker and Redis, process supervision, the synthetic demo business."""
