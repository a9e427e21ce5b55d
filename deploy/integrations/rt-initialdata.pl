# Request Tracker 5: the queues and ticket custom fields router's RT connector writes to.
# Load once into an RT database (it creates, it does not update):
#   rt-setup-database --action insert --datafile rt-initialdata.pl
# Queue names must match the values of [rt.queues] in the connector file
# (deploy/integrations/connectors.toml); REST2 cannot apply a custom field to a queue,
# so the fields are applied here (an RT administrator can also do it under Admin > Custom Fields).
use strict;
use warnings;

our @Queues = (
    { Name => 'VIP',     Description => 'Top customers: senior advisors, 2 h first response' },
    { Name => 'Premium', Description => 'Next 20 %: experienced agents' },
    { Name => 'Support', Description => 'Everyone else' },
);

our @CustomFields = (
    {   Name        => 'Router tier',
        Type        => 'FreeformSingle',
        LookupType  => 'RT::Queue-RT::Ticket',
        Description => 'Service tier decided by router (internal: never shown to the customer)',
        ApplyTo     => [ 'VIP', 'Premium', 'Support' ],
    },
    {   Name        => 'Router next action',
        Type        => 'FreeformSingle',
        LookupType  => 'RT::Queue-RT::Ticket',
        Description => 'First next-best-action decided by router',
        ApplyTo     => [ 'VIP', 'Premium', 'Support' ],
    },
);

1;
